"""``python -m matrix_p2p export`` end to end on rows files: what it writes (JSON lines,
Parquet, a dataset directory with its card that Hugging Face ``datasets`` loads), what it
refuses to overwrite, and one-line errors with exit status 2 for user mistakes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from matrix_p2p import cli
from matrix_p2p.runtime.files import read_lines, replace_file, write_parquet

ROWS = Path(__file__).parent / "export_rows"


def tau_rows(n: int) -> list[dict[str, Any]]:
    """``n`` tau rows: the real one, copied under other ids (only every third with tools)."""
    (real,) = [json.loads(x) for x in (ROWS / "tau.jsonl").read_text().splitlines()]
    out = []
    for i in range(n):
        r = json.loads(json.dumps(real))
        r["id"], r["row_index"] = f"retail_{i:03d}-t0", i
        if i % 3:
            r["dialogue"] = [t for t in r["dialogue"] if t["role"] == "user"
                             or (t["role"] == "assistant" and not (t.get("meta") or {}).get("tool_calls"))]
        out.append(r)
    return out


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def export(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["export", *map(str, args)])
    return code, capsys.readouterr().err


def test_jsonl_export_and_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_rows(tmp_path / "tau.jsonl", [*tau_rows(3), {**tau_rows(1)[0], "id": "x-t0",
                                                              "status": "failed"}])
    code, err = export(src, "--to", tmp_path / "sft.jsonl", capsys=capsys)
    assert code == 0, err
    lines = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["retail_000-t0", "retail_001-t0", "retail_002-t0"]
    assert all(len(x["tools"]) == 15 for x in lines)
    answer = 3 * tau_rows(1)[0]["usage"]["assistant"]["completion_tokens"]
    assert err.splitlines() == [
        "exported 3 messages examples from 4 rows of tau",
        f"  train             3 examples  (3 rows, {answer:,} answer tokens)",
        f"  wrote {tmp_path / 'sft.jsonl'}",
        "1 rows left out:",
        "         1  status failed (--include-failed keeps them)  (e.g. x-t0)",
    ]


def test_splits_into_named_files_zst_and_parquet(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = write_rows(tmp_path / "tau.jsonl", tau_rows(20))
    code, err = export(src, "--split", "train=0.5,test=0.5", "--to", tmp_path / "t-{split}.jsonl.zst",
                       capsys=capsys)
    assert code == 0, err
    ids = {split: {json.loads(x)["id"] for x in read_lines(tmp_path / f"t-{split}.jsonl.zst",
                                                           "jsonl.zst")}
           for split in ("train", "test")}
    assert ids["train"] and ids["test"] and not ids["train"] & ids["test"]
    assert len(ids["train"] | ids["test"]) == 20
    code, err = export(src, "--split", "train=0.5,test=0.5", "--to", tmp_path / "p-{split}.parquet",
                       capsys=capsys)
    assert code == 0, err
    got = {s: set(pq.read_table(tmp_path / f"p-{s}.parquet").column("id").to_pylist())
           for s in ("train", "test")}
    assert got == ids  # the same rows land in the same split, whatever the format


def test_a_dataset_directory_with_shards_and_its_card(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = write_rows(tmp_path / "tau.jsonl", tau_rows(9))
    out = tmp_path / "ds"
    code, err = export(src, "--split", "train=0.7,test=0.3", "--rows-per-shard", "2", "--to", out,
                       capsys=capsys)
    assert code == 0, err
    shards = sorted(p.name for p in (out / "data").iterdir())
    counts = {s: sum(pq.read_metadata(out / "data" / n).num_rows for n in shards if n.startswith(s))
              for s in ("train", "test")}
    assert sum(counts.values()) == 9
    for split, n in counts.items():
        k = max(1, -(-n // 2))
        assert [x for x in shards if x.startswith(split + "-")] == \
            [f"{split}-{i:05d}-of-{k:05d}.parquet" for i in range(k)]
    schemas = {str(pq.read_schema(out / "data" / n)) for n in shards}
    assert len(schemas) == 1 and "tool_calls" in schemas.pop()  # every shard, tools or not
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n- config_name: default\n  data_files:\n"
                           "  - split: train\n    path: data/train-*\n  - split: test\n"
                           "    path: data/test-*\n")
    assert "workflow **tau** (version 1, code version " + json.loads(
        src.read_text().splitlines()[0])["code_version"] in card
    assert f"| train (0.7) | {counts['train']} |" in card
    assert f"| test (0.3) | {counts['test']} |" in card
    assert "| `messages` | `[{role: string, content: string, tool_calls: [{id: string" in card
    assert "--split train=0.7,test=0.3" in card


def test_the_directory_loads_with_hugging_face_datasets(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    datasets = pytest.importorskip("datasets")
    src = write_rows(tmp_path / "tau.jsonl", tau_rows(6))
    out = tmp_path / "ds"
    code, err = export(src, "--split", "train=0.5,test=0.5", "--rows-per-shard", "2", "--to", out,
                       capsys=capsys)
    assert code == 0, err
    cache = str(tmp_path / "hf-cache")
    for ds in (datasets.load_dataset(str(out), cache_dir=cache),
               datasets.load_dataset("parquet", data_dir=str(out), cache_dir=cache)):
        assert sorted(ds) == ["test", "train"]
        assert ds["train"].num_rows + ds["test"].num_rows == 6
        msgs = ds["train"][0]["messages"] if ds["train"].num_rows else ds["test"][0]["messages"]
        assert msgs[1] == {"role": "assistant", "content": "Hi! How can I help you today?",
                           "tool_calls": None, "tool_call_id": None}


def test_rows_read_from_zst_and_parquet_outputs(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rows = tau_rows(4)
    plain = write_rows(tmp_path / "rows.jsonl", rows)
    replace_file(tmp_path / "rows.jsonl.zst", [json.dumps(r).encode() + b"\n" for r in rows],
                 "jsonl.zst")
    write_parquet(plain, tmp_path / "rows.parquet")  # as the sink writes a .parquet output
    outs = []
    for name in ("rows.jsonl", "rows.jsonl.zst", "rows.parquet"):
        code, err = export(tmp_path / name, "--to", tmp_path / f"{name}.out.jsonl", capsys=capsys)
        assert code == 0, err
        outs.append([json.loads(x)["messages"] for x in
                     (tmp_path / f"{name}.out.jsonl").read_text().splitlines()])
    assert outs[0] == outs[1] == outs[2]


def test_an_existing_target_is_kept_unless_overwrite(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = write_rows(tmp_path / "tau.jsonl", tau_rows(8))
    (tmp_path / "sft.jsonl").write_text("mine\n")
    code, err = export(src, "--to", tmp_path / "sft.jsonl", capsys=capsys)
    assert (code, err) == (2, f"matrix_p2p: error: --to {tmp_path / 'sft.jsonl'}: exists (give "
                              "--overwrite to replace it)\n")
    assert (tmp_path / "sft.jsonl").read_text() == "mine\n"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    code, err = export(src, "--to", other, "--overwrite", capsys=capsys)
    assert code == 2 and "holds other things than an earlier export" in err
    assert (other / "notes.txt").exists()
    out = tmp_path / "ds"
    assert export(src, "--rows-per-shard", "1", "--to", out, capsys=capsys)[0] == 0
    assert len(list((out / "data").iterdir())) == 8
    code, err = export(src, "--where", "row_index < 2", "--to", out, capsys=capsys)
    assert code == 2 and "holds an earlier export (give --overwrite" in err
    code, err = export(src, "--where", "row_index < 2", "--to", out, "--overwrite", capsys=capsys)
    assert code == 0, err
    # the earlier export's shards are gone: none of its rows is mixed into the new one
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    assert pq.read_table(out / "data" / "train-00000-of-00001.parquet").num_rows == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]


@pytest.mark.parametrize(("args", "message"), [
    (["missing.jsonl", "--to", "o.jsonl"], "missing.jsonl: no such file"),
    (["{src}", "--to", "o.jsonl", "--format", "alpaca"],
     "--format: unknown format 'alpaca' (one of messages, sharegpt, preference)"),
    (["{src}", "--to", "o.jsonl", "--where", "result.reward >= 1 and reward"],
     "--where: 'reward' does not start with a row field (one of id, workflow, workflow_version, "
     "code_version, status, error, source, row_index, trial, input, result, dialogue, usage, "
     "timings, hops, parent, children; an agent's state is under result.) at column 24: "
     "result.reward >= 1 and reward"),
    (["{src}", "--to", "o.jsonl", "--format", "preference"],
     "--format preference needs --by (the score of a row: higher is chosen)"),
    (["{src}", "--to", "o.jsonl", "--by", "result.reward"], "--by is for --format preference"),
    (["{src}", "--to", "o.jsonl", "--split", "train=0.9,test=0.2"],
     "--split: the shares add up to 1.1, not 1"),
    (["{src}", "--to", "o.jsonl", "--split", "train=0.9,test=0.1"],
     "--to o.jsonl: several splits need {split} in the file name (like x-{split}.jsonl) or a "
     "directory"),
    (["{src}", "--to", "o.csv"], "--to o.csv: unsupported format '.csv' (give a directory, a new "
                                 "one named without an extension, or a .jsonl, .jsonl.zst or "
                                 ".parquet file)"),
    (["{src}", "--to", "{src}", "--overwrite"], "--to {src}: is an input: export would overwrite "
                                                "its rows"),
    (["notes.txt", "--to", "o.jsonl"], "notes.txt: not a rows file (supported: .jsonl, "
                                       ".jsonl.zst, .parquet)"),
    (["{src}", "--to", "o", "--rows-per-shard", "0"], "--rows-per-shard: must be at least 1"),
    (["{review}", "--to", "o.jsonl"], "the rows are of workflow 'review', which is not bundled: "
                                      "give its file with --workflow"),
    (["{src}", "--to", "o.jsonl", "--workflow", "dummy"],
     "{dummy}: declares no `export:` section (which role is the assistant, which are the user; "
     "see docs/agents.md)"),
])
def test_user_mistakes_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, args: list[str],
                                               message: str) -> None:
    from matrix_p2p.workflow.loader import resolve_path

    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "tau.jsonl", tau_rows(2))
    write_rows(tmp_path / "review.jsonl", [{**tau_rows(1)[0], "workflow": "review"}])
    (tmp_path / "notes.txt").write_text("x")
    subs = {"{src}": "tau.jsonl", "{review}": "review.jsonl", "{dummy}": str(resolve_path("dummy"))}
    for k, v in subs.items():
        args = [a.replace(k, v) for a in args]
        message = message.replace(k, v)
    code, err = export(*args, capsys=capsys)
    assert (code, err) == (2, f"matrix_p2p: error: {message}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "review.jsonl", "tau.jsonl"]


def test_a_damaged_parquet_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rows.parquet").write_bytes(b"not parquet at all")
    code, err = export(tmp_path / "rows.parquet", "--to", tmp_path / "o.jsonl", capsys=capsys)
    assert code == 2
    assert err.startswith(f"matrix_p2p: error: {tmp_path / 'rows.parquet'}: not a readable Parquet "
                          "file: ") and err.count("\n") == 1


def test_no_example_is_exit_1_with_the_reasons_and_nothing_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_rows(tmp_path / "tau.jsonl", tau_rows(2))
    code, err = export(src, "--where", "result.reward > 5", "--to", tmp_path / "o.jsonl",
                       capsys=capsys)
    assert (code, err) == (1, "matrix_p2p: error: no examples: 2 rows read; left out: left out "
                              "by --where: 2\n")
    assert not (tmp_path / "o.jsonl").exists()


def test_export_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("--format", "--where", "--by", "--split", "--to", "preference", "sharegpt",
                 "load_dataset"):
        assert word in out
