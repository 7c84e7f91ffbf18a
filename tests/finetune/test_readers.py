"""Readers on the real files in ../shared/data (counts from each folder's SOURCE.txt) and on malformed
temporary files, where the error must name the file and the line / JSON path."""

import inspect
import json
import os
from collections import Counter

import pytest

from xlmr_fast.finetune.readers import (
    PAWSX_LABELS,
    XNLI_LABELS,
    DataFormatError,
    PairExample,
    iter_panx,
    lang_from_filename,
    read_conll2002,
    read_panx,
    read_squad,
    read_xnli,
    tag_set,
    xnli_premise_split,
)

XNLI_LANGS = [
    "ar",
    "bg",
    "de",
    "el",
    "en",
    "es",
    "fr",
    "hi",
    "ru",
    "sw",
    "th",
    "tr",
    "ur",
    "vi",
    "zh",
]
XQUAD_LANGS = ["ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"]
MLQA_COUNTS = {"ar": 517, "de": 512, "en": 1148, "es": 500, "hi": 507, "vi": 511, "zh": 504}
CONLL_COUNTS = {
    "esp.train": 8323, "esp.testa": 1915, "esp.testb": 1517,
    "ned.train": 15806, "ned.testa": 2895, "ned.testb": 5195,
}  # fmt: skip


def write(tmp_path, name, text, encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return str(p)


def assert_where(exc_info, path, where):
    msg = str(exc_info.value)
    assert os.path.basename(path) in msg, msg
    assert where in msg, msg
    assert isinstance(exc_info.value, ValueError)


# ------------------------------------------------------------------------------------------------
# real data


def test_xnli_real_files(shared_data):
    per_lang = {}
    for lang in XNLI_LANGS:
        ex = read_xnli(os.path.join(shared_data, "xnli", f"dev-{lang}.tsv"))
        assert len(ex) == 2490
        assert {e.lang for e in ex} == {lang}
        assert ex[0].guid == f"{lang}-0" and ex[-1].guid == f"{lang}-2489"
        assert Counter(e.label for e in ex) == {0: 830, 1: 830, 2: 830}
        per_lang[lang] = ex
    assert len(per_lang) == 15
    # parallel across languages: the same label at every position
    en_labels = [e.label for e in per_lang["en"]]
    for lang, ex in per_lang.items():
        assert [e.label for e in ex] == en_labels, lang
    first = per_lang["en"][0]
    assert first == PairExample(
        "en-0", "And he said, Mama, I'm home.",
        "He called his mom as soon as the school bus dropped him off.", XNLI_LABELS.index("neutral"), "en",
    )  # fmt: skip


def test_xnli_premise_split_real(shared_data):
    for lang in XNLI_LANGS:
        train, evl = xnli_premise_split(
            read_xnli(os.path.join(shared_data, "xnli", f"dev-{lang}.tsv"))
        )
        assert (len(train), len(evl)) == (1800, 690), lang
        assert train[-1].guid == f"{lang}-1799" and evl[0].guid == f"{lang}-1800"
        if lang == "en":
            # no premise on both sides; 600 / 230 distinct premises
            tp, ep = {e.premise for e in train}, {e.premise for e in evl}
            assert (len(tp), len(ep)) == (600, 230) and not tp & ep


def test_panx_real_files(shared_data):
    d = os.path.join(shared_data, "panx")
    train = read_panx(os.path.join(d, "train-en.tsv"))
    assert len(train) == 20000
    assert sum(len(e.words) for e in train) == 160394
    assert train[0].words[:2] == ("R.H.", "Saunders") and train[0].tags[:2] == ("B-ORG", "I-ORG")
    assert all(len(e.words) == len(e.tags) > 0 for e in train)
    assert tag_set(train) == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]
    dev_files = sorted(f for f in os.listdir(d) if f.startswith("dev-"))
    assert len(dev_files) == 47
    dev_en = read_panx(os.path.join(d, "dev-en.tsv"))
    assert len(dev_en) == 10000
    # the XTREME files carry no "en:" token prefix; "bar:24" is a real token and must survive
    assert any("bar:24" in e.words for e in dev_en)
    for lang, n in (("sw", 1000), ("zh", 10000)):
        ex = read_panx(os.path.join(d, f"dev-{lang}.tsv"))
        assert len(ex) == n and ex[0].lang == lang
    # zh has I- tags after O (a '#' placeholder splits entities): accepted, not an error
    zh = read_panx(os.path.join(d, "dev-zh.tsv"))
    assert any(
        t.startswith("I-") and (i == 0 or e.tags[i - 1] == "O")
        for e in zh
        for i, t in enumerate(e.tags)
    )


def test_conll2002_real_files(shared_data):
    for name, n in CONLL_COUNTS.items():
        ex = read_conll2002(os.path.join(shared_data, "conll2002", name))
        assert len(ex) == n, name
        assert ex[0].lang == ("es" if name.startswith("esp") else "nl")
        assert not any("-DOCSTART-" in e.words for e in ex)
        assert tag_set(ex) == [
            "O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER",
        ]  # fmt: skip
    esp = read_conll2002(os.path.join(shared_data, "conll2002", "esp.train"))
    assert esp[0].words[:3] == ("Melbourne", "(", "Australia") and esp[0].tags[0] == "B-LOC"
    assert sum(len(e.words) for e in esp) == 264715
    # Dutch: -DOCSTART- is the first line of a sentence block; it is dropped, the sentence kept
    ned = read_conll2002(os.path.join(shared_data, "conll2002", "ned.train"))
    assert ned[0].words[:3] == ("De", "tekst", "van")
    assert (
        sum(len(e.words) for e in ned) == 202931 - 287
    )  # token lines minus the 287 -DOCSTART- lines


def test_xquad_real_files(shared_data):
    ids = None
    for lang in XQUAD_LANGS:
        ex = read_squad(os.path.join(shared_data, "xquad", f"xquad.{lang}.json"))
        assert len(ex) == 1190 and {e.lang for e in ex} == {lang}
        assert {e.scoring for e in ex} == {"squad"}  # XQuAD: the SQuAD v1.1 script
        for e in ex:
            assert e.answers
            for text, start in e.answers:
                assert e.context[start : start + len(text)] == text
        # parallel: the same question ids in every language
        qids = [e.qid for e in ex]
        assert len(set(qids)) == 1190
        ids = ids or qids
        assert qids == ids, lang


def test_mlqa_real_files(shared_data):
    files = sorted(f for f in os.listdir(os.path.join(shared_data, "mlqa")) if f.endswith(".json"))
    assert len(files) == 7
    for lang, n in MLQA_COUNTS.items():
        path = os.path.join(shared_data, "mlqa", f"dev-context-{lang}-question-{lang}.json")
        ex = read_squad(path)
        assert len(ex) == n and ex[0].lang == lang
        assert {e.scoring for e in ex} == {"mlqa"}  # MLQA's files: MLQA's evaluation script
        assert all(e.context[s : s + len(t)] == t for e in ex for t, s in e.answers)
    assert {e.scoring for e in read_squad(path, scoring="squad")} == {"squad"}
    with pytest.raises(ValueError, match="scoring"):
        read_squad(path, scoring="xtreme")


# ------------------------------------------------------------------------------------------------
# language from file names


@pytest.mark.parametrize(
    "name,lang",
    [
        ("dev-en.tsv", "en"), ("train-en.tsv", "en"), ("xquad.zh.json", "zh"),
        ("dev-context-ar-question-de.json", "ar"), ("multinli.train.fr.tsv", "fr"),
        ("esp.testa", "es"), ("ned.train", "nl"), ("eng.train", "en"), ("xnli.dev.tsv", None), ("dev.tsv", None),
    ],
)  # fmt: skip
def test_lang_from_filename(name, lang):
    assert lang_from_filename(name) == lang


def test_lang_required_when_name_has_none(tmp_path):
    p = write(tmp_path, "pairs.tsv", "a\tb\tneutral\n")
    with pytest.raises(ValueError, match="lang="):
        read_xnli(p)
    assert read_xnli(p, lang="xx")[0].guid == "xx-0"


# ------------------------------------------------------------------------------------------------
# XNLI / PAWS-X layouts and errors


def test_xnli_header_alias_crlf_and_blank_lines(tmp_path):
    p = write(
        tmp_path,
        "train-en.tsv",
        "premise\thypo\tlabel\r\nA\tB\tcontradictory\r\n\r\nC\tD\tEntailment\r\n",
    )
    ex = read_xnli(p)
    assert [(e.premise, e.hypothesis, e.label, e.guid) for e in ex] == [
        ("A", "B", 2, "en-0"), ("C", "D", 0, "en-1"),
    ]  # fmt: skip


def test_xnli_release_layout_with_language_column(tmp_path):
    # XNLI 1.0 xnli.dev.tsv: named columns, all languages in one file
    head = "language\tgold_label\tsentence1_binary_parse\tsentence1\tsentence2\tpairID\n"
    rows = [
        "en\tneutral\t(x)\tP1\tH1\t1\n",
        "fr\tentailment\t(x)\tP1f\tH1f\t1\n",
        "en\tcontradiction\t(x)\tP2\tH2\t2\n",
    ]
    p = write(tmp_path, "xnli.dev.tsv", head + "".join(rows))
    en = read_xnli(p, lang="en")
    assert [(e.guid, e.premise, e.hypothesis, e.label) for e in en] == [
        ("en-0", "P1", "H1", 1),
        ("en-1", "P2", "H2", 2),
    ]
    both = read_xnli(p)
    assert [e.guid for e in both] == ["en-0", "fr-0", "en-1"]


def test_pawsx_labels(tmp_path):
    p = write(tmp_path, "dev-de.tsv", "s1\ts2\t1\ns3\ts4\t0\n")
    assert [e.label for e in read_xnli(p, labels=PAWSX_LABELS)] == [1, 0]
    with pytest.raises(DataFormatError) as e:
        read_xnli(p)  # XNLI labels expected
    assert_where(e, p, "line 1")


def test_xnli_bad_label(tmp_path):
    p = write(tmp_path, "dev-en.tsv", "a\tb\tneutral\nc\td\tentailment\ne\tf\tcontradicton\n")
    with pytest.raises(DataFormatError) as e:
        read_xnli(p)
    assert_where(e, p, "line 3")
    assert "contradicton" in str(e.value)


def test_xnli_wrong_column_count(tmp_path):
    p = write(tmp_path, "dev-en.tsv", "a\tb\tneutral\nc d\tentailment\n")
    with pytest.raises(DataFormatError) as e:
        read_xnli(p)
    assert_where(e, p, "line 2")
    assert "3 tab-separated columns, found 2" in str(e.value)


def test_xnli_empty_text(tmp_path):
    p = write(tmp_path, "dev-en.tsv", "a\tb\tneutral\n \tb\tneutral\n")
    with pytest.raises(DataFormatError) as e:
        read_xnli(p)
    assert_where(e, p, "line 2")


def _triples(n_prem, lang="en"):
    out = []
    for p in range(n_prem):
        for h in range(3):
            i = 3 * p + h
            out.append(PairExample(f"{lang}-{i}", f"premise {p}", f"hyp {i}", h, lang))
    return out


def test_premise_split_synthetic_and_layout_errors():
    train, evl = xnli_premise_split(_triples(10), 7, 3)
    assert (len(train), len(evl)) == (21, 9) and evl[0].premise == "premise 7"
    assert len(xnli_premise_split(_triples(10), 4, None)[1]) == 18
    with pytest.raises(ValueError, match="expected 10 = 7 train"):
        xnli_premise_split(_triples(11), 7, 3)
    broken = _triples(10)
    broken[4] = PairExample("en-4", "another premise", "h", 0, "en")
    with pytest.raises(ValueError, match="pairs 3-5 .* do not share one premise"):
        xnli_premise_split(broken, 7, 3)
    with pytest.raises(ValueError, match="file order"):
        xnli_premise_split(list(reversed(_triples(10))), 7, 3)
    with pytest.raises(ValueError, match="multiple of 3"):
        xnli_premise_split(_triples(10)[:-1], 7, 3)
    with pytest.raises(ValueError, match="one language"):
        xnli_premise_split(_triples(1, "en") + _triples(1, "de"), 1, 0)


# ------------------------------------------------------------------------------------------------
# PAN-X


def test_panx_layout_and_streaming(tmp_path):
    p = write(
        tmp_path, "dev-de.tsv", "Berlin\tB-LOC\nist\tO\n\n\nAngela\tB-PER\nMerkel\tI-PER"
    )  # no final newline
    it = iter_panx(p)
    assert inspect.isgenerator(it)
    ex = list(it)
    assert [(e.guid, e.words, e.tags, e.lang) for e in ex] == [
        ("de-0", ("Berlin", "ist"), ("B-LOC", "O"), "de"),
        ("de-1", ("Angela", "Merkel"), ("B-PER", "I-PER"), "de"),
    ]  # fmt: skip


def test_panx_language_prefix(tmp_path):
    p = write(tmp_path, "dev-en.tsv", "en:Paris\tB-LOC\nen:is\tO\n\nen:bar:24\tO\n")
    ex = read_panx(p)
    assert ex[0].words == ("Paris", "is") and ex[1].words == ("bar:24",)
    assert read_panx(p, strip_lang_prefix=False)[0].words == ("en:Paris", "en:is")
    # raw WikiANN layout with no language in the name: the prefix gives it
    q = write(tmp_path, "train", "fr:Paris\tB-LOC\n")
    assert read_panx(q)[0].lang == "fr" and read_panx(q)[0].words == ("Paris",)
    bad = write(tmp_path, "dev-es.tsv", "es:Madrid\tB-LOC\nes:es\tO\n\nLisboa\tB-LOC\n")
    with pytest.raises(DataFormatError) as e:
        read_panx(bad)
    assert_where(e, bad, "line 4")


def test_panx_bad_tag(tmp_path):
    p = write(tmp_path, "dev-en.tsv", "Paris\tB-LOC\nis\tO\n\nNew\tB_LOC\n")
    with pytest.raises(DataFormatError) as e:
        read_panx(p)
    assert_where(e, p, "line 4")
    assert "B_LOC" in str(e.value)
    for tag in ("PER", "E-PER", "B-", "b-per", "I-PER X"):
        q = write(tmp_path, "dev-fr.tsv", f"x\t{tag}\n")
        with pytest.raises(DataFormatError, match="line 1"):
            read_panx(q)


def test_panx_wrong_column_count(tmp_path):
    p = write(tmp_path, "dev-en.tsv", "Paris\tB-LOC\nis\tO\tO\n")
    with pytest.raises(DataFormatError) as e:
        read_panx(p)
    assert_where(e, p, "line 2")
    q = write(tmp_path, "dev-it.tsv", "Roma B-LOC\n")  # space instead of tab
    with pytest.raises(DataFormatError, match="line 1.*2 columns"):
        read_panx(q)


# ------------------------------------------------------------------------------------------------
# CoNLL


def test_conll_latin1_docstart_and_columns(tmp_path):
    text = "-DOCSTART- -X- O\n\nLa DA O\nCoruña NC B-LOC\n\n-DOCSTART- -X- O\nEl DA O\n"
    p = write(tmp_path, "esp.testb", text, encoding="latin-1")
    ex = read_conll2002(p)
    assert [e.words for e in ex] == [
        ("La", "Coruña"),
        ("El",),
    ]  # decoded as latin-1, no empty sentence
    assert [e.guid for e in ex] == ["es-0", "es-1"]
    two = write(tmp_path, "x.txt", "Juan B-PER\nvino O\n")
    assert read_conll2002(two, lang="es")[0].tags == ("B-PER", "O")


def test_conll_wrong_column_count(tmp_path):
    p = write(tmp_path, "ned.testa", "De Art O\nstad N O\n\nGent\n")
    with pytest.raises(DataFormatError) as e:
        read_conll2002(p)
    assert_where(e, p, "line 4")
    q = write(tmp_path, "ned.testb", "De Art O\nstad O\n")
    with pytest.raises(DataFormatError) as e:
        read_conll2002(q)
    assert_where(e, q, "line 2")


def test_conll_bad_tag(tmp_path):
    p = write(tmp_path, "esp.train", "Madrid NC B-LOC\nes VSI O\n\nX NC B-LOC\nY NC LOC\n")
    with pytest.raises(DataFormatError) as e:
        read_conll2002(p)
    assert_where(e, p, "line 5")


def test_tag_set_adds_missing_pairs():
    from xlmr_fast.finetune.readers import TokenExample

    ex = [
        TokenExample("x-0", ("a", "b"), ("B-MISC", "O"), "x"),
        TokenExample("x-1", ("c",), ("I-PER",), "x"),
    ]
    assert tag_set(ex) == ["O", "B-MISC", "B-PER", "I-MISC", "I-PER"]
    assert tag_set([]) == ["O"]


# ------------------------------------------------------------------------------------------------
# SQuAD JSON


def squad_doc(answers_per_q, context="The cat sat on the mat."):
    qas = [{"id": f"q{i}", "question": f"Q{i}?", "answers": a} for i, a in enumerate(answers_per_q)]
    return {
        "version": "1.1",
        "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}],
    }


def test_squad_layout(tmp_path):
    doc = squad_doc([[{"text": "cat", "answer_start": 4}, {"text": "The cat", "answer_start": 0}]])
    p = write(tmp_path, "xquad.en.json", json.dumps(doc))
    (ex,) = read_squad(p)
    assert ex.qid == "q0" and ex.question == "Q0?" and ex.lang == "en"
    assert ex.answers == (("cat", 4), ("The cat", 0))


def test_squad_broken_json(tmp_path):
    p = write(
        tmp_path, "xquad.en.json", '{"data": [\n  {"paragraphs": [\n    {"context": "x",, }\n]}'
    )
    with pytest.raises(DataFormatError) as e:
        read_squad(p)
    assert_where(e, p, "line 3")


def test_squad_answer_start_mismatch(tmp_path):
    # "mat" is at 19; 18 is off by one: moved, counted, warned
    doc = squad_doc([[{"text": "cat", "answer_start": 4}], [{"text": "mat", "answer_start": 18}]])
    p = write(tmp_path, "dev-context-es-question-es.json", json.dumps(doc))
    with pytest.warns(UserWarning, match="1 answer_start value"):
        ex = read_squad(p)
    assert ex[1].answers == (("mat", 19),) and ex[1].lang == "es"
    # nearest occurrence wins when the text occurs twice ("he" at 1 inside "The" and at 16 inside "the")
    doc = squad_doc([[{"text": "he", "answer_start": 14}]])
    with pytest.warns(UserWarning):
        assert read_squad(write(tmp_path, "xquad.de.json", json.dumps(doc)))[0].answers == (
            ("he", 16),
        )
    # text absent from the context: an error naming the question
    doc = squad_doc([[{"text": "cat", "answer_start": 4}], [{"text": "dog", "answer_start": 4}]])
    p = write(tmp_path, "xquad.vi.json", json.dumps(doc))
    with pytest.raises(DataFormatError) as e:
        read_squad(p)
    assert_where(e, p, "data[0].paragraphs[0].qas[1] (id q1).answers[0]")


@pytest.mark.parametrize(
    "mutate,where,what",
    [
        (
            lambda d: d["data"][0]["paragraphs"][0].pop("context"),
            "data[0].paragraphs[0]",
            "missing 'context'",
        ),
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][1].update(id="q0"), "qas[1]", "duplicate"),
        (
            lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(answers=[]),
            "qas[0]",
            "no answers",
        ),
        (
            lambda d: d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(
                answer_start="4"
            ),
            "qas[1]",
            "int",
        ),
        (lambda d: d.pop("data"), "top level", "missing 'data'"),
    ],
)
def test_squad_structure_errors(tmp_path, mutate, where, what):
    doc = squad_doc([[{"text": "cat", "answer_start": 4}], [{"text": "mat", "answer_start": 19}]])
    mutate(doc)
    p = write(tmp_path, "xquad.en.json", json.dumps(doc))
    with pytest.raises(DataFormatError) as e:
        read_squad(p)
    assert_where(e, p, where)
    assert what in str(e.value)
