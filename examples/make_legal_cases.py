"""Write the small inputs of examples/data_prepare.yaml: synthetic Chinese court-case snippets.

examples/data/legal_cases.jsonl holds rows labelled by three annotators (`labels`), with a case id,
hierarchical labels (刑事/诈骗/电信诈骗), and the dirt that `data prepare` cleans: HTML, full-width
characters, phone numbers, ID-card numbers, emails, duplicates and near-duplicates, and a few
malformed rows. examples/data/legal_terms.tsv is the term map (甲方 → 合同方A, ...).
Deterministic; re-running rewrites the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data"
LABELS = {
    "刑事/诈骗/电信诈骗": "被告人{name}冒充{org}工作人员，通过电话联系被害人，以账户涉嫌洗钱为由，诱骗其转账{money}元。",
    "刑事/诈骗/合同诈骗": "被告人{name}以{org}名义与被害单位签订供货合同，收取预付款{money}元后逃匿。",
    "刑事/盗窃/入户盗窃": "被告人{name}于夜间翻窗进入被害人家中，窃得现金{money}元及手机一部。",
    "民事/合同/买卖合同": "甲方{name}与乙方{org}签订买卖合同，约定乙方交付货物，甲方支付货款{money}元，乙方逾期未交货。",
    "民事/合同/借款合同": "甲方向乙方{name}借款{money}元，约定一年内归还，乙方到期催收未果，诉至法院。",
}
NAMES = ["张某", "李某某", "王某", "赵某", "陈某", "刘某某"]
ORGS = ["某银行", "某公安局", "某科技有限公司", "某物流公司", "某建材厂"]
TAIL = "本院认为，事实清楚，证据确实充分，依照相关法律规定，判决如下。"


def _case(rng: random.Random, label: str, number: int) -> str:
    body = LABELS[label].format(name=rng.choice(NAMES), org=rng.choice(ORGS), money=rng.randint(1, 90) * 1000)
    dirt = rng.choice(
        [
            "",
            "<p>案情摘要</p>&nbsp;",
            "联系电话：138 0013 8000。",
            "身份证号11010519491231002X。",
            "邮箱 clerk@court.example.cn。",
        ]
    )
    return f"（{2020 + number % 4}）某刑初{number}号　{dirt}{body}{TAIL}"


def rows(seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for number in range(1, 121):
        label = rng.choice(list(LABELS))
        votes = [
            label,
            label,
            label if rng.random() < 0.8 else rng.choice(list(LABELS)),
        ]
        out.append(
            {
                "id": f"c{number}",
                "case_id": f"案{number // 2}",
                "text": _case(rng, label, number),
                "labels": votes,
            }
        )
    out.append(
        dict(
            out[3],
            id="dup-exact",
            text=out[3]["text"].replace("本院认为", " 本院认为 "),
        )
    )
    out.append(
        dict(
            out[5],
            id="dup-near",
            text=out[5]["text"].replace("本院认为", "本院经审理认为"),
        )
    )
    out.append(
        {
            "id": "bad-label",
            "case_id": "x",
            "text": "未知案由。",
            "labels": ["行政/处罚", "行政/处罚", "行政/处罚"],
        }
    )
    out.append({"id": "no-text", "case_id": "y", "labels": ["民事/合同/借款合同"] * 3})
    out.append({"id": "tie", "case_id": "z", "text": LABELS["刑事/诈骗/电信诈骗"].format(name="孙某", org="某局", money=1) + TAIL,
                "labels": ["刑事/诈骗/电信诈骗", "刑事/诈骗/合同诈骗"]})  # fmt: skip
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "legal_cases.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows())
        f.write('{"id": "broken", "text": "未闭合的 JSON\n')
    (OUT / "legal_terms.tsv").write_text(
        "# term\treplacement\n甲方\t合同方A\n乙方\t合同方B\n甲方代表\t合同方A代表\n",
        encoding="utf-8",
    )
    print(f"wrote {OUT / 'legal_cases.jsonl'} and {OUT / 'legal_terms.tsv'}")


if __name__ == "__main__":
    main()
