"""SentencePiece training and fairseq-compatible encoding for XLM-R.

Training (`train_tokenizer`) draws an alpha-sampled sentence sample from a CC-100-style corpus
directory (q_i ∝ p_i^alpha over languages, p_i = each language's share of lines) and trains a
SentencePiece *unigram* model on it, written as `sentencepiece.bpe.model` (XLM-R's historical
file name) next to the Hugging Face tokenizer files and a `tokenizer_meta.json`.

Encoding (`Tokenizer`) uses the fairseq dictionary layout that the model's ids follow
(xlmr-spec.md §2.2):

    <s>=0  <pad>=1  </s>=2  <unk>=3  piece with spm id i>=3 -> i+1  <mask>=vocab_size-1

so a model trained here and the released XLM-R model (`vocab_size` 250002) are handled alike.
Raw sentencepiece is the reference (fairseq, which trained XLM-R, uses it); the ids match
transformers' XLMRobertaTokenizer on ordinary text (see tests/data/test_tokenizer.py).
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from itertools import chain
from pathlib import Path
from typing import Sequence

import numpy as np

from ._io import atomic_write_bytes, sha256_file
from .data.corpus import CleanConfig, CorpusError, ReadStats, iter_lines, list_languages

log = logging.getLogger(__name__)

MODEL_FILE = "sentencepiece.bpe.model"  # XLM-R's name, although the model is unigram, not BPE
META_FILE = "tokenizer_meta.json"
MODEL_MAX_LENGTH = 512

# fairseq dictionary ids (xlmr-spec.md §2.2)
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
FAIRSEQ_OFFSET = 1            # fairseq id = spm id + 1 for ordinary pieces
SPM_UNK, SPM_BOS, SPM_EOS = 0, 1, 2
SPECIAL_TOKENS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                  "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>",
                  "mask_token": "<mask>"}
MASK_TOKEN = "<mask>"


class TokenizerError(ValueError):
    """A tokenizer file or argument that cannot be used (the message names it)."""


_sha256 = sha256_file
_atomic_write_bytes = atomic_write_bytes


def _atomic_write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    _atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------- sampling
def sampling_counts(line_counts: dict[str, int], budget: int, alpha: float) -> dict[str, int]:
    """Lines to draw per language: n_i = round(budget * q_i), q_i = p_i^alpha / sum_j p_j^alpha.

    p_i = line_counts[i] / total. The draw is capped at the language's line count (a small
    language cannot give more lines than it has); the shortfall is not redistributed, so the
    sample may hold fewer than `budget` lines (train_tokenizer logs this)."""
    total = sum(line_counts.values())
    if total <= 0:
        raise CorpusError("the corpus has no usable lines")
    weights = {k: (n / total) ** alpha for k, n in line_counts.items() if n > 0}
    z = sum(weights.values())
    return {k: min(line_counts[k], int(round(budget * weights[k] / z))) if k in weights else 0
            for k in line_counts}


def _lang_rng(seed: int, lang: str):
    import numpy as np
    # Seeded per language (from the language name, not its position), so adding or removing a
    # language leaves the other languages' samples unchanged.
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(lang.encode("utf-8"))])


def _eligible_lines(path: Path, clean: CleanConfig | None, max_bytes: int, stats: ReadStats):
    """Lines a training sample may contain, in file order (both passes must see the same ones).

    Lines longer than max_bytes (UTF-8) are dropped here rather than left for sentencepiece to
    skip silently, so the per-language counts in tokenizer_meta.json are what was trained on."""
    for line in iter_lines(path, stats, clean):
        if not line.strip():
            continue
        if len(line.encode("utf-8")) > max_bytes:
            stats.removed["too_long"] = stats.removed.get("too_long", 0) + 1
            continue
        yield line


def sample_corpus(corpus_dir, out_file, *, budget: int, alpha: float = 0.3, seed: int = 0,
                  clean: CleanConfig | None = None, max_sentence_length: int = 16384,
                  progress: bool = True) -> dict:
    """Write an alpha-sampled sentence sample of corpus_dir to out_file (one line each).

    Two streaming passes: the first counts the eligible lines per language, the second keeps the
    lines whose index was drawn (indices chosen without replacement from `seed`), writing them out
    as it goes, so memory holds only the drawn indices. Returns {"line_counts", "sampled",
    "expected"} (per-language dicts; "expected" is budget*q_i before capping)."""
    import numpy as np
    from tqdm.auto import tqdm

    if budget <= 0:
        raise ValueError(f"sentences (the sampling budget) must be positive, got {budget}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    langs = list_languages(corpus_dir)

    counts: dict[str, int] = {}
    for lang, path in tqdm(langs.items(), desc="count lines", unit="lang", disable=not progress):
        st = ReadStats()
        counts[lang] = sum(1 for _ in _eligible_lines(path, clean, max_sentence_length, st))
        if st.removed.get("too_long"):
            log.info("%s: %d lines longer than %d bytes left out", lang, st.removed["too_long"],
                     max_sentence_length)
    total = sum(counts.values())
    if total == 0:
        raise CorpusError(f"corpus directory {corpus_dir} has no usable lines")
    z = sum((n / total) ** alpha for n in counts.values() if n)
    expected = {k: (budget * (n / total) ** alpha / z if n else 0.0) for k, n in counts.items()}
    draws = sampling_counts(counts, budget, alpha)

    with open(out_file, "w", encoding="utf-8", newline="\n") as out:
        for lang, path in tqdm(langs.items(), desc="sample lines", unit="lang",
                               disable=not progress):
            n, k = counts[lang], draws[lang]
            if k == 0:
                continue
            if k >= n:
                if round(expected[lang]) > n:
                    log.info("%s: has %d lines, fewer than its draw of %d: taking all of them",
                             lang, n, round(expected[lang]))
                keep = None  # every line
            else:
                # Sorted indices let the second pass keep lines while streaming.
                keep = np.sort(_lang_rng(seed, lang).choice(n, size=k, replace=False))
            j = 0
            for i, line in enumerate(_eligible_lines(path, clean, max_sentence_length,
                                                     ReadStats())):
                if keep is None or (j < k and keep[j] == i):
                    out.write(line)
                    out.write("\n")
                    j += 1
                    if keep is not None and j == k:
                        break
    n_sampled = sum(draws.values())
    if n_sampled < budget:
        log.info("sample has %d lines, budget %d (small languages gave all they have)",
                 n_sampled, budget)
    return {"line_counts": counts, "sampled": draws, "expected": expected}


# ---------------------------------------------------------------------------- training
def _train_spm(spm, corpus_dir, n_lines: int, **kw) -> None:
    """SentencePieceTrainer.train(**kw), with its errors (a bare RuntimeError carrying a C++
    source location, e.g. "Vocabulary size is smaller than required_chars. 2000 vs 2385")
    turned into a TokenizerError that names the corpus and the option to change."""
    try:
        spm.SentencePieceTrainer.train(**kw)
    except RuntimeError as e:
        msg = str(e)
        hint = ""
        if "required_chars" in msg:
            hint = ("the sample has more distinct characters (at this --character-coverage) "
                    "than --vocab-size allows: raise --vocab-size or lower "
                    "--character-coverage")
        elif "Vocabulary size too high" in msg or "hard_vocab_limit" in msg:
            hint = ("the sample is too small for this many pieces: raise --sentences (more "
                    "text), lower --vocab-size, or pass --no-hard-vocab-limit")
        raise TokenizerError(
            f"sentencepiece training on {n_lines} sampled lines of {corpus_dir} with "
            f"vocab_size={kw.get('vocab_size')}, character_coverage="
            f"{kw.get('character_coverage')} failed: {msg.strip()}"
            + (f" ({hint})" if hint else "")) from None


def train_tokenizer(corpus_dir, out_dir, *, vocab_size: int = 250000, alpha: float = 0.3,
                    sentences: int = 10_000_000, character_coverage: float = 0.9995,
                    threads: int | None = None, seed: int = 0, clean: CleanConfig | None = None,
                    max_sentence_length: int = 16384, hard_vocab_limit: bool = True,
                    keep_sample: bool = False, progress: bool = True) -> Path:
    """Train a SentencePiece unigram model on an alpha-sampled sample of corpus_dir.

    vocab_size counts sentencepiece pieces including its <unk>, <s>, </s> (250000 for XLM-R);
    the fairseq vocabulary is vocab_size + 2 (<pad> and <mask>). hard_vocab_limit=False lets
    sentencepiece return fewer pieces when the sample is too small to fill vocab_size (tiny
    test corpora); the real size is then in tokenizer_meta.json. The model is a deterministic
    function of (corpus, arguments, seed, threads). Returns out_dir.

    Writes to out_dir: sentencepiece.bpe.model, tokenizer_config.json,
    special_tokens_map.json (what transformers' XLMRobertaTokenizer.from_pretrained reads) and
    tokenizer_meta.json. Every file is written under a temporary name and renamed."""
    import sentencepiece as spm

    if vocab_size < 4:
        raise ValueError(f"vocab_size must be at least 4, got {vocab_size}")
    if not 0 < character_coverage <= 1:
        raise ValueError(f"character_coverage must be in (0, 1], got {character_coverage}")
    threads = int(threads or os.cpu_count() or 1)
    out = Path(out_dir)
    list_languages(corpus_dir)  # fail on a bad corpus before creating out_dir
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # The sample and sentencepiece's output live in a private temporary folder inside out_dir
    # (same file system, so the final rename is atomic); it is removed however training ends.
    work = Path(tempfile.mkdtemp(prefix=".train-tokenizer-", dir=out))
    try:
        sample_file = work / "sample.txt"
        info = sample_corpus(corpus_dir, sample_file, budget=sentences, alpha=alpha, seed=seed,
                             clean=clean, max_sentence_length=max_sentence_length,
                             progress=progress)
        n_lines = sum(info["sampled"].values())
        log.info("training a %d-piece unigram model on %d sampled lines (%d threads)",
                 vocab_size, n_lines, threads)
        # sentencepiece's trainer draws random numbers (sentence shuffling) from a process-wide
        # generator seeded from the clock unless set: without this two runs differ. The result
        # also depends on num_threads (the EM statistics are summed per thread).
        spm.set_random_generator_seed(int(seed) & 0xFFFFFFFF)
        # The sample is streamed to the trainer through sentence_iterator and the model comes
        # back through model_writer, rather than input=/model_prefix= paths: sentencepiece
        # stores those paths in the model file, so the same training in another (temporary)
        # folder would give a different file and sha256.
        model_buf = io.BytesIO()
        with open(sample_file, encoding="utf-8", newline="\n") as f:
            _train_spm(
                spm, corpus_dir, n_lines,
                sentence_iterator=(line.rstrip("\n") for line in f), model_writer=model_buf,
                model_type="unigram", vocab_size=vocab_size,
                character_coverage=character_coverage, num_threads=threads,
                # all sampled lines are used: the sample already is the sentence budget
                input_sentence_size=0, shuffle_input_sentence=True,
                max_sentence_length=max_sentence_length, hard_vocab_limit=hard_vocab_limit,
                # XLM-R's raw spm layout: <unk>=0 <s>=1 </s>=2 and no <pad>, so that fairseq
                # id = spm id + 1 and spm's <unk> 0 maps to fairseq 3 (xlmr-spec.md §2.1)
                unk_id=SPM_UNK, bos_id=SPM_BOS, eos_id=SPM_EOS, pad_id=-1,
                unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
                minloglevel=1 if progress else 2,
            )
        model_bytes = model_buf.getvalue()
        if keep_sample:
            os.replace(sample_file, out / "tokenizer_sample.txt")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if created and not any(out.iterdir()):  # leave no empty output folder behind
            out.rmdir()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

    _atomic_write_bytes(out / MODEL_FILE, model_bytes)
    write_hf_files(out)
    tok = Tokenizer.from_pretrained(out)
    meta = {
        "model_file": MODEL_FILE,
        "model_type": "unigram",
        "spm_vocab_size": tok.sp.get_piece_size(),
        "vocab_size": tok.vocab_size,  # fairseq / HF size: spm pieces + <pad> + <mask>
        "model_sha256": tok.model_sha256,
        "alpha": alpha,
        "sentence_budget": sentences,
        "sentences_sampled": n_lines,
        "seed": seed,
        "character_coverage": character_coverage,
        "max_sentence_length": max_sentence_length,
        "clean": None if clean is None else vars(clean),
        "line_counts": info["line_counts"],
        "sampled_lines": info["sampled"],
        "seconds": round(time.time() - t0, 3),
    }
    _atomic_write_json(out / META_FILE, meta)
    log.info("wrote %s (%d pieces, fairseq vocab %d) in %.1f s", out / MODEL_FILE,
             meta["spm_vocab_size"], meta["vocab_size"], meta["seconds"])
    return out


def write_hf_files(out_dir) -> None:
    """tokenizer_config.json and special_tokens_map.json in the layout of XLM-R's hub repo.

    Written by hand rather than through XLMRobertaTokenizer(vocab_file=...).save_pretrained:
    transformers 5.x builds a 5-token vocabulary from vocab_file (DESIGN.md, pitfalls), while
    from_pretrained(dir) converts sentencepiece.bpe.model correctly. No tokenizer.json is
    written, so transformers always rebuilds its tokenizer from the spm model itself."""
    out = Path(out_dir)
    mask = {"content": MASK_TOKEN, "lstrip": True, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}
    special_map = {**{k: v for k, v in SPECIAL_TOKENS.items() if k != "mask_token"},
                   "mask_token": mask}
    config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        **{k: v for k, v in SPECIAL_TOKENS.items() if k != "mask_token"},
        "mask_token": mask,
        "add_prefix_space": True,
        "clean_up_tokenization_spaces": False,
    }
    _atomic_write_json(out / "special_tokens_map.json", special_map)
    _atomic_write_json(out / "tokenizer_config.json", config)


def copy_tokenizer_files(tokenizer_dir, out_dir) -> None:
    """Put the tokenizer beside a saved model: sentencepiece.bpe.model (+ tokenizer_meta.json)
    and the HF files, so that both Tokenizer.from_pretrained(out_dir) and transformers'
    XLMRobertaTokenizer.from_pretrained(out_dir) work on the model directory alone."""
    src, out = Path(tokenizer_dir), Path(out_dir)
    if not (src / MODEL_FILE).is_file():
        raise TokenizerError(f"tokenizer directory {src} has no {MODEL_FILE}")
    for name in (MODEL_FILE, META_FILE):
        if (src / name).exists():
            _atomic_write_bytes(out / name, (src / name).read_bytes())
    write_hf_files(out)


# ---------------------------------------------------------------------------- encoding
class Tokenizer:
    """fairseq-id XLM-R tokenizer over a SentencePiece model (ours or the released one)."""

    bos_id = BOS_ID
    pad_id = PAD_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def __init__(self, model_file, *, threads: int | None = None):
        import sentencepiece as spm
        path = Path(model_file)
        if not path.is_file():
            raise TokenizerError(f"sentencepiece model {path} does not exist")
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"sentencepiece model {path} cannot be read "
                                 f"(corrupt or not a sentencepiece model): {e}") from None
        # The fairseq mapping (id = spm id + 1, unk 0 -> 3) is only valid for XLM-R's layout.
        layout = (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id())
        if layout != (SPM_UNK, SPM_BOS, SPM_EOS, -1):
            raise TokenizerError(f"sentencepiece model {path} has unk/bos/eos/pad ids {layout}; "
                                 f"XLM-R's layout is (0, 1, 2, -1)")
        self.sp = sp
        self.model_file = path
        self.model_sha256 = _sha256(path)
        self.threads = int(threads or os.cpu_count() or 1)
        self.vocab_size = sp.get_piece_size() + 2  # + <pad> + <mask>: 250002 for XLM-R
        self.mask_id = self.vocab_size - 1
        self.model_max_length = MODEL_MAX_LENGTH

    @classmethod
    def from_pretrained(cls, path, **kw) -> "Tokenizer":
        """A directory holding sentencepiece.bpe.model, or the model file itself."""
        p = Path(path)
        if p.is_dir():
            if not (p / MODEL_FILE).is_file():
                raise TokenizerError(f"tokenizer directory {p} has no {MODEL_FILE}")
            p = p / MODEL_FILE
        elif not p.exists():
            raise TokenizerError(f"tokenizer path {p} does not exist (expected a directory "
                                 f"holding {MODEL_FILE} or the model file)")
        return cls(p, **kw)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.model_file)!r}, vocab_size={self.vocab_size})"

    # -- id mapping
    @staticmethod
    def _to_fairseq(spm_ids) -> list[int]:
        return [i + FAIRSEQ_OFFSET if i else UNK_ID for i in spm_ids]

    def _to_spm(self, ids, skip_special_tokens: bool) -> list:
        """fairseq ids -> spm ids, or the literal string for <pad>/<mask> (no spm id)."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise TokenizerError(f"id {i} is outside the vocabulary [0, {self.vocab_size})")
            if i in (BOS_ID, PAD_ID, EOS_ID, UNK_ID, self.mask_id):
                if skip_special_tokens:
                    continue
                out.append({BOS_ID: "<s>", PAD_ID: "<pad>", EOS_ID: "</s>", UNK_ID: "<unk>",
                            self.mask_id: MASK_TOKEN}[i])
            else:
                out.append(i - FAIRSEQ_OFFSET)
        return out

    def id_to_piece(self, i: int) -> str:
        s = self._to_spm([i], skip_special_tokens=False)[0]
        return s if isinstance(s, str) else self.sp.id_to_piece(s)

    def piece_to_id(self, piece: str) -> int:
        special = {"<s>": BOS_ID, "<pad>": PAD_ID, "</s>": EOS_ID, "<unk>": UNK_ID,
                   MASK_TOKEN: self.mask_id}
        if piece in special:
            return special[piece]
        return self._to_fairseq([self.sp.piece_to_id(piece)])[0]

    # -- encoding
    def encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """fairseq ids of each text, no special tokens, no <mask> handling: the bulk path
        (sentencepiece's multi-threaded batch encoder; what data.preprocess uses)."""
        if isinstance(texts, str):
            raise TypeError("encode_ids takes a list of strings; use encode() for one string")
        flat, lens = self.encode_ids_flat(texts)
        return [a.tolist() for a in np.split(flat, np.cumsum(lens)[:-1])] if len(lens) else []

    def encode_ids_flat(self, texts: Sequence[str]):
        """encode_ids as one flat uint32 array of fairseq ids and the (n,) int64 lengths: the
        id mapping is vectorised (no per-token Python), what data.preprocess writes."""
        if isinstance(texts, str):
            raise TypeError("encode_ids_flat takes a list of strings")
        batch = self.sp.encode(list(texts), num_threads=self.threads)
        lens = np.fromiter(map(len, batch), dtype=np.int64, count=len(batch))
        flat = np.fromiter(chain.from_iterable(batch), dtype=np.uint32, count=int(lens.sum()))
        # fairseq layout: piece = spm id + 1, spm <unk> (0) -> 3
        flat = np.where(flat == 0, np.uint32(UNK_ID), flat + np.uint32(FAIRSEQ_OFFSET))
        return flat.astype(np.uint32, copy=False), lens

    def _encode_text(self, text: str) -> list[int]:
        # "<mask>" is an added token with lstrip=True in XLM-R's HF tokenizer: it is split out
        # before sentencepiece and absorbs the whitespace to its left. The text between masks
        # is encoded on its own, as HF does (each piece gets sentencepiece's dummy prefix).
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        if MASK_TOKEN not in text:
            return self._to_fairseq(self.sp.encode(text))
        parts = text.split(MASK_TOKEN)
        ids: list[int] = []
        for k, part in enumerate(parts):
            if k + 1 < len(parts):
                part = part.rstrip()  # lstrip of the following <mask>
            ids.extend(self._to_fairseq(self.sp.encode(part)) if part.strip() else [])
            if k + 1 < len(parts):
                ids.append(self.mask_id)
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """`<s> text </s>` in fairseq ids: [0] + ids + [2]."""
        ids = self._encode_text(text)
        return [BOS_ID, *ids, EOS_ID] if add_special_tokens else ids

    def encode_pair(self, a: str, b: str, add_special_tokens: bool = True) -> list[int]:
        """`<s> A </s></s> B </s>`: [0] + A + [2, 2] + B + [2] (RoBERTa's double separator)."""
        return self._with_specials(self._encode_text(a), self._encode_text(b)) \
            if add_special_tokens else self._encode_text(a) + self._encode_text(b)

    @staticmethod
    def _with_specials(a: list[int], b: list[int] | None) -> list[int]:
        if b is None:
            return [BOS_ID, *a, EOS_ID]
        return [BOS_ID, *a, EOS_ID, EOS_ID, *b, EOS_ID]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of fairseq ids. With skip_special_tokens=False, <s>, <pad>, </s>, <unk> and
        <mask> appear as those strings."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        parts, run = [], []
        for x in self._to_spm(ids, skip_special_tokens):
            if isinstance(x, str):
                if run:
                    parts.append(self.sp.decode(run))
                    run = []
                parts.append(x)
            else:
                run.append(x)
        if run:
            parts.append(self.sp.decode(run))
        return " ".join(p for p in parts if p)

    # -- batch API in the shape of Hugging Face's __call__
    @staticmethod
    def _truncate_pair(la: int, lb: int, budget: int) -> tuple[int, int]:
        """Lengths kept by HF's "longest_first" for a pair (the tokenizers library's rule):
        the shorter sequence keeps min(its length, an even share), the longer gets the rest."""
        if la + lb <= budget:
            return la, lb
        swap = la > lb
        n1, n2 = (lb, la) if swap else (la, lb)
        if n1 > budget:
            n2 = n1
        else:
            n2 = max(n1, budget - n1)
        if n1 + n2 > budget:
            n1 = budget // 2
            n2 = n1 + budget % 2
        return (n2, n1) if swap else (n1, n2)

    def __call__(self, texts, text_pair=None, *, padding=False, truncation=False,
                 max_length: int | None = None, return_tensors: str | None = None,
                 add_special_tokens: bool = True) -> dict:
        """{"input_ids", "attention_mask"} for one text or a batch, like HF's tokenizer(...).

        padding: False, True/"longest" (to the longest in the batch) or "max_length";
        truncation: False or True/"longest_first" (pairs trim the longer side first);
        max_length defaults to 512 where truncation or padding="max_length" needs it.
        Padding is on the right with id 1. return_tensors="pt" gives torch tensors (needs
        equal lengths, i.e. padding, for a batch)."""
        single = isinstance(texts, str)
        if single:
            texts = [texts]
            if text_pair is not None:
                if not isinstance(text_pair, str):
                    raise TypeError("text_pair must be a string when texts is a string")
                text_pair = [text_pair]
        texts = list(texts)
        if text_pair is not None:
            if isinstance(text_pair, str) and not single:  # list(str) would pair with chars
                raise TypeError("text_pair must be a list of strings (one per text) when texts "
                                "is a batch")
            text_pair = list(text_pair)
            if len(text_pair) != len(texts):
                raise ValueError(f"text_pair has {len(text_pair)} items, texts {len(texts)}")
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding must be False, True, 'longest' or 'max_length', "
                             f"got {padding!r}")
        if truncation not in (False, True, "longest_first", "do_not_truncate"):
            raise ValueError(f"truncation must be False, True or 'longest_first', "
                             f"got {truncation!r}")
        truncate = truncation in (True, "longest_first")
        if max_length is None and (truncate or padding == "max_length"):
            max_length = self.model_max_length
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")

        rows = []
        for k, text in enumerate(texts):
            a = self._encode_text(text)
            b = self._encode_text(text_pair[k]) if text_pair is not None else None
            if truncate:
                n_special = (2 if b is None else 4) if add_special_tokens else 0
                budget = max_length - n_special
                if budget < 0:
                    raise ValueError(f"max_length {max_length} is shorter than the "
                                     f"{n_special} special tokens")
                if b is None:
                    a = a[:budget]
                else:
                    la, lb = self._truncate_pair(len(a), len(b), budget)
                    a, b = a[:la], b[:lb]
            if add_special_tokens:
                rows.append(self._with_specials(a, b))
            else:
                rows.append(a + (b or []))

        if padding in (True, "longest"):
            width = max(map(len, rows), default=0)
        elif padding == "max_length":
            width = max_length
        else:
            width = None
        masks = [[1] * len(r) for r in rows]
        if width is not None:
            masks = [m + [0] * (width - len(r)) for m, r in zip(masks, rows)]
            rows = [r + [PAD_ID] * (width - len(r)) for r in rows]

        if return_tensors == "pt":
            import torch
            if len({len(r) for r in rows}) > 1:
                raise ValueError("sequences have different lengths: pass padding=True to "
                                 "return tensors")
            ids_t = torch.tensor(rows, dtype=torch.long)
            mask_t = torch.tensor(masks, dtype=torch.long)
            return {"input_ids": ids_t, "attention_mask": mask_t}
        if single:
            return {"input_ids": rows[0], "attention_mask": masks[0]}
        return {"input_ids": rows, "attention_mask": masks}


# ---------------------------------------------------------------------------- CLI
def _cli_args(p) -> None:
    p.add_argument("--corpus", required=True,
                   help="corpus directory of <lang>.txt[.xz|.gz] files (CC-100 format)")
    p.add_argument("--out", required=True, help="output directory for the tokenizer files")
    p.add_argument("--vocab-size", type=int, default=250000,
                   help="sentencepiece pieces incl. <unk> <s> </s> (default 250000, as XLM-R)")
    p.add_argument("--alpha", type=float, default=0.3,
                   help="language sampling exponent: q_i ∝ p_i^alpha (default 0.3)")
    p.add_argument("--sentences", type=int, default=10_000_000,
                   help="sentence budget of the training sample (default 10,000,000)")
    p.add_argument("--character-coverage", type=float, default=0.9995,
                   help="sentencepiece character_coverage (default 0.9995)")
    p.add_argument("--threads", type=int, default=None,
                   help="sentencepiece training threads (default: all CPUs)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--max-sentence-length", type=int, default=16384,
                   help="leave out lines longer than this many UTF-8 bytes (default 16384)")
    p.add_argument("--clean", action="store_true",
                   help="normalise whitespace and drop duplicate lines before sampling")
    p.add_argument("--no-hard-vocab-limit", action="store_true",
                   help="let sentencepiece return fewer pieces than --vocab-size on a tiny corpus")


def _cli_run(a) -> int:
    out = train_tokenizer(a.corpus, a.out, vocab_size=a.vocab_size, alpha=a.alpha,
                          sentences=a.sentences, character_coverage=a.character_coverage,
                          threads=a.threads, seed=a.seed,
                          clean=CleanConfig() if a.clean else None,
                          max_sentence_length=a.max_sentence_length,
                          hard_vocab_limit=not a.no_hard_vocab_limit)
    meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
    print(f"trained {out / MODEL_FILE}: {meta['spm_vocab_size']} pieces (fairseq vocab "
          f"{meta['vocab_size']}) on {meta['sentences_sampled']} lines from "
          f"{len(meta['line_counts'])} languages in {meta['seconds']:.1f} s; "
          f"sha256 {meta['model_sha256'][:16]}")
    return 0


def _register() -> None:
    from . import cli
    if "train-tokenizer" not in cli.COMMANDS:  # tolerate a re-import (importlib.reload)
        cli.register("train-tokenizer",
                     "train an XLM-R SentencePiece unigram tokenizer on an alpha-sampled corpus",
                     _cli_args, _cli_run)


_register()
