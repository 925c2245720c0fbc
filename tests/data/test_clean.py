"""Cleaning steps on Chinese and English text, the term map on unsegmented Chinese, PII counts, rejections."""

from __future__ import annotations

import pytest

from dstune.config import cleaning as cfg
from dstune.data.clean import Cleaner, clean_sft_records
from dstune.data.clean_steps import STEPS, trie_pattern
from dstune.data.readers import Record
from dstune.errors import ConfigError


def run(step, *texts: str, **kwargs) -> list[str]:
    return STEPS[step.type](step, **kwargs).apply(list(texts))


def test_unicode_nfkc_and_fullwidth_to_halfwidth():
    assert run(cfg.UnicodeStep(), "ＡＢＣ１２３，！", "合同（２０２３）第１号　完") == [
        "ABC123,!",
        "合同(2023)第1号 完",
    ]
    assert run(cfg.UnicodeStep(form="NFC", halfwidth=False), "ＡＢＣ") == ["ＡＢＣ"]
    assert run(cfg.UnicodeStep(form="NFC"), "ｅ\u0301，") == ["\u00e9,"]


def test_whitespace_collapse_keeps_lines_and_removes_spaces_between_chinese_characters():
    text = "  Hello \t  world \n\n\n\n 合 同  约定  \r\n end "
    assert run(cfg.WhitespaceStep(), text) == ["Hello world\n\n合同约定\nend"]
    assert run(cfg.WhitespaceStep(keep_newlines=False, cjk_spaces=False), text) == ["Hello world 合 同 约定 end"]


def test_html_is_stripped_with_entities_decoded():
    text = "<div><p>Price &amp; terms</p><script>alert(1)</script><br/>甲方&lt;签字&gt;<!-- note --></div>"
    assert run(cfg.HtmlStep(), text) == ["Price & terms\n\n甲方<签字>\n"]  # whitespace trims the rest
    assert run(cfg.HtmlStep(), "3 < 4 and 5 > 2") == ["3 < 4 and 5 > 2"]


def test_regex_rules_apply_in_order():
    step = cfg.RegexStep(
        rules=[
            {"pattern": r"第(\d+)条", "replace": r"Article \1"},
            {"pattern": "ARTICLE", "replace": "Art.", "ignore_case": True},
        ]
    )
    assert run(step, "见第12条。", "see article 3") == ["见Art. 12。", "see Art. 3"]


def test_term_map_longest_match_first_on_unsegmented_chinese():
    step = cfg.TermMapStep(
        terms={
            "甲方": "合同方A",
            "乙方": "合同方B",
            "甲方代表": "合同方A代表人",
            "代表": "REP",
        }
    )
    # split() would see one "word" and replace nothing; overlapping terms take the longest; no chained replacement
    assert run(step, "甲方代表与乙方签订合同，甲方付款，代表签字") == [
        "合同方A代表人与合同方B签订合同，合同方A付款，REP签字"
    ]
    assert run(cfg.TermMapStep(terms={"A": "B", "B": "C"}), "AB") == ["BC"]
    assert run(cfg.TermMapStep(terms={"NDA": "non-disclosure agreement"}), "Sign the NDA.") == [
        "Sign the non-disclosure agreement."
    ]


def test_trie_pattern_escapes_and_matches_every_term():
    import re

    terms = ["a.b", "a.bc", "x", "(y)"]
    pattern = re.compile(trie_pattern(terms))
    assert pattern.findall("a.bc a.b a_b y x (y)") == ["a.bc", "a.b", "x", "(y)"]


def test_term_map_file_and_bad_line(tmp_path):
    good = tmp_path / "terms.tsv"
    good.write_text("# comment\n甲方\t合同方A\n\n乙方,合同方B\n", encoding="utf-8")
    assert run(cfg.TermMapStep(file=str(good), terms={"乙方": "B"}), "甲方乙方") == ["合同方AB"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("甲方\t合同方A\nno separator here\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        run(cfg.TermMapStep(file=str(bad)), "x")
    assert info.value.where == f"{bad}:2"


def test_pii_masks_each_kind_and_counts_it():
    step = STEPS["pii"](cfg.PiiStep())
    texts = [
        "联系人电话13800138000或010-12345678，邮箱zhang.san@example.com。",
        "身份证号11010519491231002X，银行卡6222 0212 3456 7890 128。",
        "Call (415) 555-2671 or mail a.b@corp.co.uk. Order 12345678901234 is not a card.",
        "号码11010519491231002Y校验位不对。",
    ]
    assert step.apply(texts) == [
        "联系人电话[PHONE]或[PHONE]，邮箱[EMAIL]。",
        "身份证号[ID_CARD]，银行卡[BANK_CARD]。",
        "Call [PHONE] or mail [EMAIL]. Order 12345678901234 is not a card.",
        "号码11010519491231002Y校验位不对。",
    ]
    assert dict(step.counts) == {"phone": 3, "email": 2, "id_card": 1, "bank_card": 1}


def test_length_filter_in_chars_and_tokens(tokenizer):
    chars = STEPS["length"](cfg.LengthStep(min=3, max=6), where="cleaning.steps[2]")
    assert chars.check(["ab", "abc", "合同方A签字了吗"]) == [
        "2 chars is below the minimum 3 (cleaning.steps[2].min)",
        None,
        "8 chars is above the maximum 6 (cleaning.steps[2].max)",
    ]
    tokens = STEPS["length"](cfg.LengthStep(max=3, unit="tokens"), tokenizer=tokenizer)
    assert tokens.check(["Hello", "The quick brown fox jumps over the lazy dog."])[1].endswith("(cleaning.steps.max)")
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        STEPS["length"](cfg.LengthStep(max=3, unit="tokens"))


def test_language_filter_by_script():
    step = STEPS["language"](cfg.LanguageStep(allow=["zh"], min_ratio=0.6))
    reasons = step.check(["甲方应按时付款。", "The buyer pays on time.", "合同条款约定 ok", "12345 !!!"])
    assert reasons[0] is None and reasons[2] is None
    assert "mostly en" in reasons[1] and "no letters" in reasons[3]


def test_cleaner_counts_changes_and_reports_a_step_that_empties_a_row():
    steps = [cfg.HtmlStep(), cfg.WhitespaceStep(), cfg.LengthStep(min=4)]
    cleaner = Cleaner(steps)
    texts, stages, reasons = cleaner.clean(
        [["<b>合同</b>  条款"], ["<br/>"], ["ok"], ["fine text"]],
        lambda t: [" ".join(p) for p in t],
    )
    assert texts[0] == ["合同条款"] and texts[3] == ["fine text"]
    assert stages == [None, "clean:0:html", "clean:2:length", None]
    assert "0:html left text piece 1 empty" in reasons[1]
    assert cleaner.report() == {
        "0:html": {"changed": 2, "rejected": 1},
        "1:whitespace": {"changed": 1, "rejected": 0},
        "2:length": {"changed": 0, "rejected": 1},
    }


def test_clean_sft_records_cleans_every_message_and_keeps_invalid_rows_for_the_encoder():
    cleaning = cfg.CleaningSection(
        steps=[
            cfg.TermMapStep(terms={"甲方": "合同方A"}),
            cfg.PiiStep(),
            cfg.LengthStep(min=4),
        ]
    )
    records = [
        Record(
            "f.jsonl",
            1,
            {
                "messages": [
                    {"role": "user", "content": "甲方电话13800138000"},
                    {"role": "assistant", "content": "甲方好"},
                ]
            },
        ),
        Record("f.jsonl", 2, {"instruction": "x", "output": "y"}),
        Record("f.jsonl", 3, {"messages": [{"role": "robot", "content": "?"}]}),
    ]
    cleaned = clean_sft_records(records, cleaning)
    assert [r.line for r in cleaned.kept] == [1, 3]
    assert cleaned.kept[0].data["messages"] == [
        {"role": "user", "content": "合同方A电话[PHONE]"},
        {"role": "assistant", "content": "合同方A好"},
    ]
    assert cleaned.rejected[0][0].line == 2 and "3 chars is below the minimum 4" in cleaned.rejected[0][1]
    assert cleaned.stats["1:pii"]["masked"] == {"phone": 1}
