"""dataset_info.json entries and the file readers: every format, folders, precise errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneforge.data.catalogue import parse_entry, resolve
from tuneforge.data.sources import read_path, read_rows
from tuneforge.errors import DataError

ROWS = [
    {"instruction": "Say hi", "input": "", "output": "Hi!"},
    {"instruction": "Add", "input": "2 and 3", "output": "5"},
]


def write_catalogue(folder, entries):
    (folder / "dataset_info.json").write_text(json.dumps(entries))


def test_defaults_follow_llamafactory():
    alpaca = parse_entry("a", {"file_name": "a.json"}, "info")
    assert (alpaca.columns.prompt, alpaca.columns.query, alpaca.columns.response) == (
        "instruction",
        "input",
        "output",
    )
    sharegpt = parse_entry("s", {"file_name": "s.json", "formatting": "sharegpt"}, "info")
    assert sharegpt.columns.messages == "conversations"
    assert (sharegpt.tags.role_tag, sharegpt.tags.user_tag) == ("from", "human")
    openai = parse_entry("o", {"file_name": "o.json", "formatting": "openai"}, "info")
    assert (openai.tags.role_tag, openai.tags.observation_tag) == ("role", "tool")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"file_name": "a.json", "colums": {}}, r"unknown key `colums`.*`columns`"),
        ({"file_name": "a.json", "columns": {"promt": "q"}}, r"`columns`: unknown key `promt`"),
        ({"file_name": "a.json", "formatting": "xml"}, "formatting 'xml' is not supported"),
        ({"file_name": "a.json", "ranking": "yes"}, "`ranking` must be true or false"),
        ({"columns": {"prompt": "q"}}, "needs `file_name`"),
        ({"file_name": "a.json", "columns": {"images": "i"}}, "multimodal"),
        # LLaMA-Factory's catalogue has such entries (nectar_rm): no default column names exist
        ({"hf_hub_url": "org/pairs", "ranking": True}, r"add `\"columns\": \{\"chosen\""),
        (
            {"file_name": "a.json", "ranking": True, "columns": {"chosen": "c"}},
            "names the columns of its two responses",
        ),
    ],
)
def test_bad_entries_are_reported_with_the_dataset_name(entry, expected):
    with pytest.raises(DataError, match=expected) as error:
        parse_entry("mine", entry, "data/dataset_info.json")
    assert "dataset `mine`" in str(error.value)


def test_unknown_dataset_lists_the_nearest(tmp_path):
    write_catalogue(tmp_path, {"alpaca_demo": {"file_name": "a.json"}})
    with pytest.raises(DataError, match=r"`alpaca_dmeo`.*Did you mean: `alpaca_demo`"):
        resolve("alpaca_dmeo", tmp_path)
    with pytest.raises(DataError, match="no dataset_info.json"):
        resolve("x", tmp_path / "nowhere")


@pytest.mark.parametrize("suffix", ["json", "jsonl", "csv", "parquet", "arrow"])
def test_every_file_type_reads_the_same_rows(tmp_path, suffix):
    path = tmp_path / f"data.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(ROWS))
    elif suffix == "jsonl":
        path.write_text("\n".join(json.dumps(row) for row in ROWS) + "\n")
    elif suffix == "csv":
        path.write_text("instruction,input,output\nSay hi,,Hi!\nAdd,2 and 3,5\n")
    elif suffix == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        table = pa.Table.from_pylist(ROWS)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    rows = read_path(path)
    assert [row.fields for row in rows] == ROWS
    assert rows[1].where == f"{path} row 2"


def test_txt_is_one_document_per_line(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("first document\n\nsecond document\n")
    rows = read_path(path)
    assert [row.fields["text"] for row in rows] == ["first document", "second document"]
    assert rows[1].where.endswith("row 3")  # the file's own line number


def test_folder_reads_all_files_in_order_and_refuses_mixed_types(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "b.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    (folder / "a.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    assert [row.fields for row in read_path(folder)] == ROWS
    (folder / "c.csv").write_text("instruction\nx\n")
    with pytest.raises(DataError, match="mixes file types"):
        read_path(folder)


def test_broken_json_names_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"instruction": "a"},\n {"instruction": }]')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON at line 2"):
        read_path(path)
    lines = tmp_path / "broken.jsonl"
    lines.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl row 2: not valid JSON"):
        read_path(lines)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_path(tmp_path / "nope.json")
    odd = tmp_path / "data.xml"
    odd.write_text("<a/>")
    with pytest.raises(DataError, match="cannot read `.xml` files"):
        read_path(odd)


def test_hub_dataset_fails_fast_and_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("tuneforge.data.sources.hub_reachable", lambda: False)
    spec = parse_entry("alpaca_en", {"hf_hub_url": "llamafactory/alpaca_en"}, "info")
    with pytest.raises(DataError, match="cannot be reached"):
        read_rows(spec, tmp_path, cache_dir=str(tmp_path / "hf"))
