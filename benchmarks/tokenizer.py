"""Tokenizer speed and density (issue 13 item 2): `encode_batch_fast` against transformers' call, per kind of text.

For each kind of real text on this machine (benchmarks/common.py), about `--mb` MB is encoded by
* `amr`: `components.core.text.HFTokenizer.encode_batch` (tokenizers' `encode_batch_fast`: Rust thread pool, GIL
  released, no offsets), and
* `transformers`: `tokenizer(texts, add_special_tokens=False, split_special_tokens=True)` (what amr called before),
both in chunks of 256 documents, as ingest does. The ids are checked equal. Reported: wall and CPU seconds (this
process, all threads), MB/s, and bytes per token. The tokenizer is a directory (default: the SmolLM2 tokenizer
fixture unpacked to a temporary directory). Wall time on a shared machine depends on its load: the load average
is recorded beside the figures.

    PYTHONPATH=. .venv/bin/python benchmarks/tokenizer.py [--mb 2] [--tokenizer DIR] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import TEXT_SOURCES, machine_info, markdown_table, real_documents, write_results

from components.core.text import HFTokenizer

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "smollm2-tokenizer"
CHUNK = 256


def unpack_fixture(out: Path) -> Path:
    with gzip.open(FIXTURE / "tokenizer.json.gz", "rb") as src, open(out / "tokenizer.json", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(FIXTURE / "tokenizer_config.json", out / "tokenizer_config.json")
    return out


def timed(fn, texts: list[str]) -> tuple[list, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    out = [ids for start in range(0, len(texts), CHUNK) for ids in fn(texts[start : start + CHUNK])]
    return out, time.perf_counter() - wall, time.process_time() - cpu


def measure(tok: HFTokenizer, kind: str, target_bytes: int) -> dict:
    texts, _ = real_documents(target_bytes, kinds=(kind,))
    n_bytes = sum(len(t.encode()) for t in texts)

    def hf_call(chunk):
        return tok._hf(chunk, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]

    ours, wall_a, cpu_a = timed(tok.encode_batch, texts)
    theirs, wall_t, cpu_t = timed(hf_call, texts)
    assert [a.tolist() for a in ours] == theirs, f"{kind}: ids differ"
    tokens = sum(len(a) for a in ours)
    mb = n_bytes / 1e6
    return {
        "kind": kind,
        "documents": len(texts),
        "bytes": n_bytes,
        "tokens": tokens,
        "bytes_per_token": round(n_bytes / tokens, 3),
        "amr_wall_s": round(wall_a, 3),
        "amr_cpu_s": round(cpu_a, 3),
        "amr_mb_per_s": round(mb / wall_a, 2),
        "transformers_wall_s": round(wall_t, 3),
        "transformers_cpu_s": round(cpu_t, 3),
        "transformers_mb_per_s": round(mb / wall_t, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=2.0, help="MB of text per kind")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer directory (default: SmolLM2)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.tokenizer or unpack_fixture(Path(tmp))
        tok = HFTokenizer(str(path))
        load_before = os.getloadavg()
        rows = [measure(tok, kind, int(args.mb * 1e6)) for kind in TEXT_SOURCES]
    payload = {
        "tokenizer": "SmolLM2 (tests/fixtures)" if args.tokenizer is None else str(args.tokenizer),
        "identity": tok.identity,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": machine_info(("tokenizers", "transformers")),
        "rows": rows,
    }
    headers = ["kind", "MB", "bytes/token", "amr MB/s", "amr CPU s", "transformers MB/s", "transformers CPU s"]
    table = markdown_table(
        headers,
        [
            [r["kind"], round(r["bytes"] / 1e6, 2), r["bytes_per_token"], r["amr_mb_per_s"], r["amr_cpu_s"]]
            + [r["transformers_mb_per_s"], r["transformers_cpu_s"]]
            for r in rows
        ],
    )
    load = ", ".join(f"{x:.2f}" for x in load_before)
    md = f"# Tokenizer: encode_batch_fast vs transformers' call\n\nLoad average before: {load}.\n\n{table}\n"
    write_results(args.out, "tokenizer", payload, md)
    print(md)


if __name__ == "__main__":
    main()
