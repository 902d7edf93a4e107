"""Regenerate the shared CLIP BPE tokenizer files from OpenAI's original vocabulary.

Every architecture Atelier ships a config folder for (SD 1.x, SD 2.x, SDXL) tokenizes
prompts with the same 49,408-token byte-level BPE that OpenAI released with CLIP as
``bpe_simple_vocab_16e6.txt.gz`` (it is also shipped inside the ``open_clip_torch``
wheel). This script turns that file into the ``vocab.json`` / ``merges.txt`` pair that
``transformers.CLIPTokenizer`` reads, in the layout of the ``openai/clip-vit-large-patch14``
hub repo, and writes them to ``modules/engine/model_configs/clip_bpe/``.

A file larger than ``MAX_PLAIN_BYTES`` is written gzip-compressed (``vocab.json.gz``)
instead of plain, so the repository stays free of megabyte-sized text files.

Usage::

    python modules/devtools/build_clip_bpe.py path/to/bpe_simple_vocab_16e6.txt.gz [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

#: Number of merge rules CLIP uses: the 49,152-token BPE minus 256 byte tokens minus 2 specials.
NUM_MERGES = 49152 - 256 - 2
#: The two special tokens, appended after the merges (ids 49406 and 49407).
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
#: Size of the full vocabulary.
VOCAB_SIZE = 49408
#: Header line Hugging Face writes at the top of a ``merges.txt``.
MERGES_HEADER = "#version: 0.2"
#: Files above this many bytes are shipped gzip-compressed.
MAX_PLAIN_BYTES = 1_000_000

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "engine" / "model_configs" / "clip_bpe"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the rest map to code points from 256 upwards.
    The iteration order of the returned dict is the order of the first 256 vocabulary ids.
    """
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def read_merges(source: Path) -> list[tuple[str, str]]:
    """The ``NUM_MERGES`` merge rules of ``bpe_simple_vocab_16e6.txt.gz`` (its first line is a header)."""
    lines = gzip.decompress(source.read_bytes()).decode("utf-8").split("\n")
    merges: list[tuple[str, str]] = []
    for line in lines[1 : NUM_MERGES + 1]:
        left, right = line.split()
        merges.append((left, right))
    if len(merges) != NUM_MERGES:
        raise ValueError(f"{source}: expected {NUM_MERGES} merges, found {len(merges)}")
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token → id, in CLIP's order: bytes, bytes + ``</w>``, merged pairs, then the two specials."""
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += list(SPECIAL_TOKENS)
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"expected {VOCAB_SIZE} distinct tokens, built {len(vocab)}")
    return vocab


def render_vocab(vocab: dict[str, int]) -> bytes:
    """``vocab.json`` as Hugging Face saves it for CLIP: one compact UTF-8 JSON object."""
    return json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def render_merges(merges: list[tuple[str, str]]) -> bytes:
    """``merges.txt``: the version header, then one space-separated pair per line."""
    body = "\n".join(f"{left} {right}" for left, right in merges)
    return f"{MERGES_HEADER}\n{body}\n".encode()


def write_file(out_dir: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``name``, or as ``name.gz`` when it exceeds ``MAX_PLAIN_BYTES``.

    The variant not written is removed, so the folder never holds both forms.
    """
    plain = out_dir / name
    packed = out_dir / f"{name}.gz"
    if len(data) > MAX_PLAIN_BYTES:
        # mtime=0 keeps the archive byte-identical across rebuilds.
        packed.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        plain.unlink(missing_ok=True)
        return packed
    plain.write_bytes(data)
    packed.unlink(missing_ok=True)
    return plain


def build(source: Path, out_dir: Path) -> list[Path]:
    """Regenerate ``vocab.json`` and ``merges.txt`` (plain or gzipped) under ``out_dir``."""
    merges = read_merges(source)
    vocab = build_vocab(merges)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        write_file(out_dir, "vocab.json", render_vocab(vocab)),
        write_file(out_dir, "merges.txt", render_merges(merges)),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments: the source archive and the output folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="path to bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the files and print what was written."""
    args = parse_args(argv)
    for path in build(args.source, args.out):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
