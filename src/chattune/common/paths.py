"""Where each stage reads and writes (the data contract in docs/pipeline.md). dvc.yaml names the same paths."""
from pathlib import Path

SAMPLE_DIR = Path("data/sample")
RAW_DIR = Path("data/raw")
ED_SUBDIR = "empatheticdialogues"
ED_SPLITS = ("train", "valid", "test")
DPO_SUBDIR = "human_like_dpo"
DPO_FILE = "data.json"

PROCESSED_DIR = Path("data/processed")
SFT_DATA = PROCESSED_DIR / "sft"
DPO_DATA = PROCESSED_DIR / "dpo"

MODELS_DIR = Path("models")
MODEL_SOURCE = MODELS_DIR / "source.json"  # what models/base/ is made from, pinned (model_source stage)
BASE_MODEL = MODELS_DIR / "base"
SFT_MODEL = MODELS_DIR / "sft"
DPO_MODEL = MODELS_DIR / "dpo"
JUDGES_DIR = MODELS_DIR / "judges"  # the reply classifiers evaluate scores with (judges stage)

CHECKPOINTS_DIR = Path("checkpoints")  # trainers' working folders; removed after a stage succeeds
METRICS_DIR = Path("metrics")
DATA_METRICS = METRICS_DIR / "data.json"  # rows read, kept and dropped (preprocess)
LENGTHS = METRICS_DIR / "lengths.json"  # token lengths of the replies each training teaches (preprocess)
JUDGES_METRICS = METRICS_DIR / "judges.json"  # the reply classifiers' checks and verdicts (judges)
LIVE_DIR = Path("dvclive")
TRACKER_LOGS = Path("logs")  # what other trackers write locally (sft.report_to, dpo.report_to); no DVC output
PROBE_SET = Path("data/eval/probe.jsonl")  # the project's own prompts with reference replies
GENERATIONS = Path("eval/generations.jsonl")
STACK_CARD = Path("eval/model-card.md")  # the model card of base + SFT + DPO, with the headline metrics
HUMAN_SHEET = Path("eval/human/sheet.csv")  # blind: model names replaced by codes
HUMAN_KEY = Path("eval/human/key.json")  # code -> model, kept apart from the sheet
HUMAN_RATINGS = Path("eval/human/ratings")  # filled sheets, one per rater
HUMAN_VOTES = Path("eval/human/votes")  # pairwise votes, one file per rater
EVAL_PLOT = Path("plots/eval.json")
EVAL_CHARTS = Path("plots/eval")

