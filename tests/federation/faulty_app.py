"""A ClientApp for the failure tests: the node named "crash" fails, the node named "wrong"
replies with a model of another architecture under the federation's preset name, the node named
"drop3" fails from round 3 of a multi-round flow on, the node named "broken" runs feds2r's own
ClientApp on a dataset that does not exist (its data passed the launcher's check, then went
away); any other node behaves like feds2r's own ClientApp."""

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from feds2r.data.labels import CLASS_NAMES
from feds2r.federation import client_app as real
from feds2r.models import create_model

app = ClientApp()

MISSING = "gta5:/nonexistent/gta5?split=train"


@app.train()
def train(msg: Message, context: Context) -> Message:
    name = context.node_config.get("name")
    if name == "crash":
        raise RuntimeError("simulated client crash")
    if name == "drop3" and int(msg.content["config"].get("server-round", 0)) >= 3:
        raise RuntimeError("simulated drop-out in round 3")
    if name == "broken":
        context.node_config = {**context.node_config, "data": MISSING}
        return real.train(msg, context)
    if name == "wrong":
        meta = {
            "client": "wrong",
            "preset": "m2f-cpu",
            "class-names": list(CLASS_NAMES),
            "steps": 2,
            "train-seconds": 0.1,
            "feds2r-version": "0",
        }
        state = create_model("segformer-cpu").state_dict()
        content = RecordDict(
            {"arrays": ArrayRecord(torch_state_dict=state), "meta": ConfigRecord(meta)}
        )
        return Message(content=content, reply_to=msg)
    return real.train(msg, context)
