"""model_source: pin what the base model is made of in models/source.json.

dvc.yaml marks this stage always_changed: a local model folder or an installed wheel can change while no
param does. It is cheap (a hash of the source), and it rewrites an identical file when nothing changed, so
base_model and everything after it rerun only on a real change.
"""
from chattune.basemodel.sources import describe
from chattune.common.errors import run
from chattune.common.outputs import write_json
from chattune.common.params import load_params
from chattune.common.paths import MODEL_SOURCE


def main() -> None:
    params = load_params()
    source = describe(params.model)
    write_json(MODEL_SOURCE, source)
    print(f"model_source: {params.model.name} ({source['kind']}) -> {MODEL_SOURCE}")


if __name__ == "__main__":
    run(main, "model_source")
