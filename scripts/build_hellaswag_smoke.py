"""Build the HellaSwag-format smoke file from edugpt's embedded corpus (Python documentation text). NOT HellaSwag.

    python scripts/build_hellaswag_smoke.py                       # rewrites the shipped file, deterministically
    python scripts/build_hellaswag_smoke.py --num_items 50 --output_file /tmp/smoke.jsonl

Each item is honest about what it is: the context is a passage of one document (1-2 consecutive sentences), the
right ending is the sentence that really follows it, and the three distractors are sentences from other documents
with exactly as many GPT-2 tokens as the right ending. Nothing imitates a real HellaSwag item; the file only
exercises the HellaSwag task end to end offline (prompt cleaning, acc/acc_norm, lm-eval plumbing). The rows use
HellaSwag's schema (ind, activity_label, ctx_a, ctx_b, ctx, endings, label, split, split_type, source_id) with
`source_id` = "edugpt-embedded~<document id>".
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edugpt.config.cli import parse_config, run
from edugpt.corpus.sources import EMBEDDED, load_source, resolve_source
from edugpt.errors import EduGPTError
from edugpt.eval.tasks.hellaswag_local import NUM_ENDINGS, SMOKE_FILE, read_hellaswag_jsonl
from edugpt.model.tokenizer import gpt2_tiktoken

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@dataclass
class SmokeArguments:
    output_file: str = field(default=str(SMOKE_FILE), metadata={"help": "Where to write the jsonl file."})
    num_items: int = field(default=200, metadata={"help": "How many items to write."})
    max_items_per_document: int = field(default=2, metadata={"help": "Spread items over many documents."})
    seed: int = field(default=1234, metadata={"help": "Seed for picking passages, distractors and label order."})
    dataset: str = field(
        default=EMBEDDED, metadata={"help": "Corpus, as prepare_data.py's --dataset: 'embedded' or a parquet/jsonl file."}
    )


def is_clean_sentence(sentence: str) -> bool:
    """Prose only: lm-eval's hellaswag cleaning deletes `[...]`, and code fragments make meaningless endings."""
    if not 40 <= len(sentence) <= 160 or not sentence[0].isupper() or sentence[-1] != ".":
        return False
    if any(ch in sentence for ch in "[]{}<>|`\\=") or ">>>" in sentence or "..." in sentence:
        return False
    prose = sum(ch.isalpha() or ch in " ,.;:'-()" for ch in sentence)
    return prose / len(sentence) > 0.93


def paragraphs_of_sentences(text: str) -> list[list[str]]:
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        flat = " ".join(block.split())
        if flat:
            paragraphs.append([s.strip() for s in SENTENCE_END.split(flat) if s.strip()])
    return paragraphs


def candidate_items(doc: dict) -> list[tuple[str, str]]:
    """(passage, true next sentence) pairs inside one paragraph of one document."""
    pairs = []
    for sentences in paragraphs_of_sentences(doc["text"]):
        for i in range(1, len(sentences)):
            if not is_clean_sentence(sentences[i]):
                continue
            context = sentences[max(0, i - 2):i]
            while len(" ".join(context)) > 220 and len(context) > 1:
                context = context[1:]
            passage = " ".join(context)
            if 40 <= len(passage) <= 220 and all(is_clean_sentence(s) for s in context):
                pairs.append((passage, sentences[i]))
    return pairs


def build_items(documents: list[dict], args: SmokeArguments) -> list[dict]:
    rng = random.Random(args.seed)
    encoding = gpt2_tiktoken()
    pool = [  # every clean sentence with its document and GPT-2 token count: the distractor pool
        (doc["id"], s, len(encoding.encode_ordinary(" " + s)))
        for doc in documents for para in paragraphs_of_sentences(doc["text"]) for s in para if is_clean_sentence(s)
    ]
    order = list(range(len(documents)))
    rng.shuffle(order)
    items = []
    for doc_index in order:
        doc = documents[doc_index]
        pairs = candidate_items(doc)
        rng.shuffle(pairs)
        own_sentences = {s for para in paragraphs_of_sentences(doc["text"]) for s in para}
        for passage, ending in pairs[: args.max_items_per_document]:
            # Exactly the right ending's GPT-2 token count: an untrained model's summed log-likelihood is mostly
            # -log(50257) per token, so any length difference, not the text, would decide its answer.
            length = len(encoding.encode_ordinary(" " + ending))
            similar = [s for d, s, n in pool if d != doc["id"] and n == length and s not in own_sentences]
            if len(set(similar)) < NUM_ENDINGS - 1:
                continue
            distractors = rng.sample(sorted(set(similar)), NUM_ENDINGS - 1)
            endings = [ending, *distractors]
            rng.shuffle(endings)
            items.append({
                "ind": len(items),
                "activity_label": doc["title"],
                "ctx_a": passage,
                "ctx_b": "",
                "ctx": passage,
                "endings": endings,
                "label": endings.index(ending),
                "split": "val",
                "split_type": "indomain",
                "source_id": f"edugpt-embedded~{doc['id']}",
            })
            if len(items) == args.num_items:
                return items
    raise EduGPTError(f"the corpus only yields {len(items)} items; lower --num_items to at most that.")


def document_title(row: dict) -> str:
    """HellaSwag's `activity_label`: the topic's heading (pydoc://topics/...) or "The <name> module"."""
    url = row.get("url") or ""
    if url.startswith("pydoc://module/"):
        return f"The {url.removeprefix('pydoc://module/')} module"
    first_line = row["text"].strip().splitlines()[0].strip() if row["text"].strip() else ""
    return first_line if 0 < len(first_line) <= 60 else "Python documentation"


def load_documents(dataset: str) -> list[dict]:
    """`id`, `text`, `title` of every document of the corpus `prepare_data.py --dataset` would read."""
    source = resolve_source(dataset)
    rows = load_source(source)
    return [{"id": str(row["id"]), "text": row["text"], "title": document_title(row)} for row in rows]


def main(argv=None) -> None:
    (args,) = parse_config([SmokeArguments], argv)
    items = build_items(load_documents(args.dataset), args)
    target = Path(args.output_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=target.parent, suffix=".tmp", delete=False, encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    read_hellaswag_jsonl(f.name)  # the file must pass the same checks as any user's file
    os.replace(f.name, target)
    print(f"wrote {len(items)} HellaSwag-format items from {len({i['source_id'] for i in items})} documents to {target}")


if __name__ == "__main__":
    run(main)
