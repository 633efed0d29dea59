"""The one-shot federation on Flower.

:mod:`feds2r.federation.protocol` holds the federation as plain functions (no Flower import);
:mod:`~feds2r.federation.client_app` and :mod:`~feds2r.federation.server_app` are the Flower
ClientApp and ServerApp that carry its messages; :mod:`~feds2r.federation.local` starts a
SuperLink and SuperNodes on this machine (``feds2r federate local``); :mod:`~feds2r.federation.tls`
makes certificates and node keys for trying TLS and SuperNode authentication.
"""
