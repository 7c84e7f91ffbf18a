"""Metrics against hand-worked examples: accuracy, CoNLL entity F1 (conlleval rules) and SQuAD / MLQA
answer F1 / exact match with language-aware normalisation."""

import pytest

from xlmr_fast.finetune.metrics import (
    accuracy,
    entity_spans,
    exact_match,
    normalize_answer,
    span_f1,
    squad_f1,
    squad_scores,
)

# ------------------------------------------------------------------------------------------------
# accuracy


def test_accuracy():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert accuracy(iter([1]), (1,)) == 1.0
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])


# ------------------------------------------------------------------------------------------------
# entity spans (end exclusive)


def test_spans_iob2_and_sentence_end():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    # an entity running to the last token is closed at the sentence end
    assert entity_spans(["O", "B-ORG", "I-ORG", "I-ORG"]) == {("ORG", 1, 4)}


def test_spans_all_o_and_empty():
    assert entity_spans(["O", "O", "O"]) == set()
    assert entity_spans([]) == set()


def test_spans_i_without_b():
    assert entity_spans(["I-PER", "I-PER", "O", "I-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    # O breaks a run: the second I-PER starts a new entity (PAN-X zh '#' placeholder case)
    assert entity_spans(["B-ORG", "I-ORG", "O", "I-ORG", "I-ORG"]) == {("ORG", 0, 2), ("ORG", 3, 5)}


def test_spans_type_change_inside_run():
    assert entity_spans(["B-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 3)}
    assert entity_spans(["I-PER", "I-ORG"]) == {("PER", 0, 1), ("ORG", 1, 2)}


def test_spans_adjacent_b_and_iob1():
    assert entity_spans(["B-PER", "B-PER", "I-PER"]) == {("PER", 0, 1), ("PER", 1, 3)}
    # IOB1 (CoNLL-2003): I- inside, B- only where two same-type entities touch
    assert entity_spans(["I-LOC", "I-LOC", "B-LOC", "O", "I-MISC"]) == {
        ("LOC", 0, 2),
        ("LOC", 2, 3),
        ("MISC", 4, 5),
    }


def test_spans_iobes():
    assert entity_spans(["S-PER", "B-LOC", "E-LOC", "E-LOC", "O"]) == {
        ("PER", 0, 1),
        ("LOC", 1, 3),
        ("LOC", 3, 4),
    }


def test_spans_bad_tag():
    for bad in ("PER", "B_PER", "X-PER", "B-", ""):
        with pytest.raises(ValueError, match="not 'O'"):
            entity_spans(["O", bad])


# ------------------------------------------------------------------------------------------------
# span F1


def test_span_f1_hand_worked():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "I-ORG", "B-MISC"]]
    # gold: PER(0,2) LOC(3,4) | ORG(0,1)        -> 3
    # pred: PER(0,2)          | ORG(0,2) MISC(2,3) -> 3; correct: PER only (ORG boundary is wrong)
    r = span_f1(gold, pred)
    assert (r["n_true"], r["n_pred"], r["n_correct"]) == (3, 3, 1)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(1 / 3)


def test_span_f1_unequal_precision_recall():
    gold = [["B-PER", "O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "O", "B-LOC", "O"]]  # PER right, LOC too short
    r = span_f1(gold, pred)
    assert (r["precision"], r["recall"], r["f1"]) == (0.5, 0.5, 0.5)
    pred = [["B-PER", "O", "O", "O"]]
    r = span_f1(gold, pred)
    assert (r["precision"], r["recall"]) == (1.0, 0.5) and r["f1"] == pytest.approx(2 / 3)


def test_span_f1_type_must_match():
    # Same boundaries, wrong type: not a correct entity (conlleval / seqeval). Catches a match
    # on (start, end) alone, which would score a model that only finds boundaries as perfect.
    r = span_f1([["B-PER", "I-PER", "O", "B-ORG"]], [["B-LOC", "I-LOC", "O", "B-ORG"]])
    assert (r["n_true"], r["n_pred"], r["n_correct"]) == (2, 2, 1)
    assert r["f1"] == pytest.approx(0.5)
    assert span_f1([["B-PER"]], [["B-MISC"]])["f1"] == 0.0


def test_span_f1_entities_keyed_by_sentence():
    # the same span in a different sentence is not a match
    r = span_f1([["B-PER"], ["O"]], [["O"], ["B-PER"]])
    assert (r["n_correct"], r["f1"]) == (0, 0.0)


def test_span_f1_degenerate_cases():
    # no predicted entities: precision 0 (conlleval / seqeval), F1 0
    r = span_f1([["B-PER", "O"]], [["O", "O"]])
    assert (r["precision"], r["recall"], r["f1"]) == (0.0, 0.0, 0.0)
    # no gold entities: recall 0, F1 0
    r = span_f1([["O", "O"]], [["B-PER", "O"]])
    assert (r["precision"], r["recall"], r["f1"]) == (0.0, 0.0, 0.0)
    # neither: 0, not 1
    r = span_f1([["O"]], [["O"]])
    assert (r["precision"], r["recall"], r["f1"]) == (0.0, 0.0, 0.0)
    assert span_f1([], [])["f1"] == 0.0
    # perfect: IOB1 gold and IOB2 prediction denote the same entity
    assert span_f1([["I-PER", "I-PER"]], [["B-PER", "I-PER"]])["f1"] == 1.0


def test_span_f1_length_errors():
    with pytest.raises(ValueError, match="2 gold sequences but 1"):
        span_f1([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 1 has 2 gold tags but 1"):
        span_f1([["O"], ["O", "O"]], [["O"], ["O"]])


# ------------------------------------------------------------------------------------------------
# answer normalisation (MLQA rules)


def test_normalize_english():
    assert normalize_answer("The Eiffel  Tower.", "en") == "eiffel tower"
    assert normalize_answer("an apple, a pear & the end", "en") == "apple pear end"
    assert normalize_answer("Theatre another", "en") == "theatre another"  # whole words only
    # Unicode punctuation categories, and ASCII symbols from string.punctuation ($ is Sc, not P)
    assert normalize_answer("«Paris» — 1,000$!", "en") == "paris 1000"
    assert normalize_answer("   ", "en") == ""


def test_normalize_spanish_german_articles():
    assert normalize_answer("La Casa Blanca", "es") == "casa blanca"
    assert normalize_answer("unos los el", "es") == ""
    # English articles are not Spanish ones
    assert normalize_answer("the house", "es") == "the house"
    assert normalize_answer("Die Bundesrepublik des Landes", "de") == "bundesrepublik landes"
    assert normalize_answer("Einem Derby", "de") == "derby"


def test_normalize_other_mlqa_languages():
    assert normalize_answer("cái bàn của tôi", "vi") == "bàn tôi"
    # Arabic: MLQA removes the substring "ال" everywhere (its regex), kept as is
    assert normalize_answer("الكتاب", "ar") == "كتاب"
    assert normalize_answer("مال", "ar") == "م"
    assert normalize_answer("भारत का", "hi") == "भारत का"  # no article list for Hindi


def test_normalize_chinese_mixed_segmentation():
    assert normalize_answer("北京大学", "zh") == "北 京 大 学"
    assert normalize_answer("2008年 北京奥运会。", "zh") == "2008 年 北 京 奥 运 会"
    assert normalize_answer("iPhone手机", "zh-Hans") == "iphone 手 机"


def test_normalize_other_languages():
    # no article list: lowercase, punctuation, whitespace tokens
    assert normalize_answer("Το Σπίτι.", "el") == "το σπίτι"
    assert normalize_answer("東京タワー", "ja") == "東 京 タ ワ ー"


# ------------------------------------------------------------------------------------------------
# F1 / exact match


def test_squad_f1_hand_worked():
    # pred tokens [big, red, dog], gold [red, dog, barked]: 2 shared, P = R = 2/3
    assert squad_f1("the big red dog", "A red dog barked", "en") == pytest.approx(2 / 3)
    # P = 1, R = 1/2 -> F1 = 2/3
    assert squad_f1("Paris", "Paris France", "en") == pytest.approx(2 / 3)
    assert squad_f1("dog dog", "dog", "en") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset overlap
    assert squad_f1("London", "Paris", "en") == 0.0


def test_exact_match_articles_punctuation():
    assert exact_match("The Eiffel Tower.", "eiffel tower", "en") == 1.0
    assert exact_match("Eiffel Towers", "eiffel tower", "en") == 0.0
    assert exact_match("la casa", "Casa", "es") == 1.0
    assert exact_match("der Rhein", "Rhein", "de") == 1.0
    assert exact_match("the Rhein", "Rhein", "de") == 0.0


def test_empty_prediction():
    assert squad_f1("", "Paris", "en") == 0.0
    assert exact_match("", "Paris", "en") == 0.0
    # both normalise to empty: exact match 1, F1 0 (MLQA / SQuAD v1.1 behaviour)
    assert exact_match("the", "a", "en") == 1.0
    assert squad_f1("the", "a", "en") == 0.0


def test_chinese_character_f1():
    # 4 chars predicted, 2 gold, 2 shared: P = 1/2, R = 1 -> 2/3
    assert squad_f1("北京大学", "北京", "zh") == pytest.approx(2 / 3)
    # with whitespace tokens it would be 0 (one token each): the character split is what gives credit
    assert squad_f1("北京大学", "北京", "en") == 0.0
    assert exact_match("北京。", "北京", "zh") == 1.0


def test_squad_scores_multiple_golds_and_missing():
    refs = {"a": ["the cat", "a black cat"], "b": ["red dog"], "c": ["bird"], "d": ["fish"]}
    preds = {"a": "black cat", "b": "dog", "c": "bird", "zzz": "ignored"}
    # a: max(F1 vs "cat" = 2/3, vs "black cat" = 1) = 1, EM 1;  b: F1 2/3, EM 0;  c: 1, 1;  d: missing -> 0
    r = squad_scores(preds, refs, "en")
    assert r["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)
    assert r["exact_match"] == pytest.approx(100 * 2 / 4)
    assert (r["total"], r["missing"]) == (4, 1)


def test_squad_scores_language_matters():
    refs = {"q": ["北京"]}
    assert squad_scores({"q": "北京大学"}, refs, "zh")["f1"] == pytest.approx(100 * 2 / 3)
    assert squad_scores({"q": "北京大学"}, refs, "en")["f1"] == 0.0


def _squad_v11_normalize(s):
    # the SQuAD v1.1 evaluation script's normalize_answer, transcribed
    import re
    import string
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def test_squad_rules_are_the_squad_v11_script_whatever_the_language():
    # XQuAD is scored with the SQuAD v1.1 script (XTREME, the XQuAD authors), not MLQA's rules:
    # no character tokens for Chinese, no Arabic article removal, only ASCII punctuation.
    cases = ["北京大学。", "The «Cat» sat, an hour!", "الكتاب الجديد", "Die Katze — der Hund",
             "a b  the c", "¿Qué? ¡Sí!"]
    for text in cases:
        for lang in ("en", "zh", "ar", "de", "es"):
            assert normalize_answer(text, lang, rules="squad") == _squad_v11_normalize(text)
    refs = {"q": ["北京"]}
    assert squad_scores({"q": "北京大学"}, refs, "zh", rules="squad")["f1"] == 0.0
    assert squad_scores({"q": "北京大学"}, refs, "zh", rules="mlqa")["f1"] == pytest.approx(
        100 * 2 / 3)
    with pytest.raises(ValueError, match="rules"):
        squad_f1("a", "a", "en", rules="xtreme")


def test_squad_scores_errors():
    with pytest.raises(ValueError, match="empty"):
        squad_scores({}, {})
    with pytest.raises(ValueError, match="no gold answers"):
        squad_scores({"q": "x"}, {"q": []})
    with pytest.raises(TypeError, match="list of answer strings"):
        squad_scores({"q": "x"}, {"q": "x"})
