"""Export: the adapter zip, a merged model that answers like base + adapter, and a GGUF that round-trips exactly.

The session's pirate adapter is exported; merging and GGUF writing reuse each other's outputs.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest


PROMPTS = ["Where is my order?", "What is the capital of France?"]  # one trained on, one never seen
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this module: on a shared 2-core machine two threads spin against other jobs and
    run these tiny batches 3x slower; alone, one thread costs little here. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def adapter(pirate_adapter: Path) -> Path:
    """The session's real pirate adapter (trained once for every slow test), scorecard included."""
    return pirate_adapter


@pytest.fixture(scope="module")
def merged(adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voicetune.export import merge

    return merge(adapter, tmp_path_factory.mktemp("export-merged") / "fp32", dtype="fp32")


@pytest.fixture(scope="module")
def merged_bf16(adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voicetune.export import merge

    return merge(adapter, tmp_path_factory.mktemp("export-merged") / "bf16")  # bf16 is the default


@pytest.fixture(scope="module")
def merged_replies(merged: Path) -> list[str]:
    """Greedy replies of the merged folder, loaded with plain transformers: no PEFT anywhere."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    return [greedy(model, AutoTokenizer.from_pretrained(merged), p) for p in PROMPTS]


@pytest.fixture(scope="module")
def gguf_f16(merged: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voicetune.export import to_gguf

    # A folder of its own: AutoTokenizer would read a tokenizer_config.json lying beside the file.
    return to_gguf(merged, tmp_path_factory.mktemp("export-gguf") / "voice-f16.gguf")


def greedy(model, tokenizer, prompt: str) -> str:  # noqa: ANN001
    """One prompt alone (no padding), rendered with the tokenizer's own chat template, as ChatModel renders it."""
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def safetensors_dtypes(folder: Path) -> set[str]:
    """The dtypes recorded in the safetensors headers, read without loading a weight."""
    dtypes = set()
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        dtypes |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return dtypes


# --- the adapter zip ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_zip_holds_adapter_card_and_snippet(adapter: Path, tmp_path: Path):
    from voicetune.export import adapter_zip

    dest = adapter_zip(adapter, tmp_path / "out" / "voice.zip")
    assert dest == tmp_path / "out" / "voice.zip"
    assert [p.name for p in dest.parent.iterdir()] == ["voice.zip"]  # no temporary file left behind
    with zipfile.ZipFile(dest) as z:
        assert sorted(z.namelist()) == sorted(["adapter_model.safetensors", "adapter_config.json", "run.json",
                                               "config.yaml", "README.md", "load_adapter.py"])
        assert z.read("adapter_model.safetensors") == (adapter / "adapter_model.safetensors").read_bytes()
        # run.json and config.yaml go out as their public copies: the same, less this machine's paths
        from voicetune.export import public_config, public_record

        assert json.loads(z.read("run.json")) == public_record(json.loads((adapter / "run.json").read_text()))
        import yaml

        shared_config = yaml.safe_load(z.read("config.yaml"))
        assert shared_config == public_config(yaml.safe_load((adapter / "config.yaml").read_text()))
        assert shared_config["data"] == "pirate.jsonl" and "out" not in shared_config
        assert str(adapter.parent).encode() not in z.read("run.json") + z.read("config.yaml") + z.read("README.md")
        shipped = json.loads(z.read("adapter_config.json"))
        card = z.read("README.md").decode()
        snippet = z.read("load_adapter.py").decode()

    # adapter_config.json names the Hub base instead of this machine's cache path; nothing else changes
    original = json.loads((adapter / "adapter_config.json").read_text())
    assert shipped["base_model_name_or_path"] == HUB_ID
    assert {**original, "base_model_name_or_path": HUB_ID} == shipped

    assert card.startswith(f"---\nbase_model: {HUB_ID}\nlibrary_name: peft\n")
    record = json.loads((adapter / "run.json").read_text())
    config = record["config"]
    for line in (f"| learning_rate | {config['learning_rate']} |", f"| epochs | {config['epochs']} |",
                 f"| seed | {config['seed']} |", "| lora.r | 16 |", "| lora.alpha | 32 |",
                 f"| train conversations | {record['data']['train']} |", "| file | pirate.jsonl |",
                 f"| steps | {record['metrics']['steps']} |"):
        assert line in card, line
    verdict = json.loads((adapter / "scorecard.json").read_text())["verdict"]
    assert f"## Scorecard\n\n{verdict}\n\n| metric | base | prompt-only | tuned |" in card
    assert f"BASE = {HUB_ID!r}" in snippet
    assert "AutoModelForCausalLM.from_pretrained(BASE)" in snippet
    assert 'PeftModel.from_pretrained(model, ".")' in snippet


@pytest.mark.slow
def test_zip_snippet_loads_the_adapter(adapter: Path, base_path: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run load_adapter.py from the unzipped folder, with the Hub id pointed at the local copy (no network)."""
    from voicetune.export import adapter_zip

    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(adapter_zip(adapter, tmp_path / "voice.zip")) as z:
        z.extractall(folder)
    snippet = (folder / "load_adapter.py").read_text().replace(repr(HUB_ID), repr(base_path))
    snippet = snippet.replace("max_new_tokens=128", "max_new_tokens=4")
    monkeypatch.chdir(folder)
    exec(compile(snippet, "load_adapter.py", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out.strip()


@pytest.mark.slow
def test_zip_card_renders_a_scorecard(adapter: Path, tmp_path: Path):
    from voicetune.export import adapter_zip

    scored = tmp_path / "scored"
    shutil.copytree(adapter, scored)
    record = json.loads((scored / "run.json").read_text())
    record["scorecard"] = {"verdict": "Tuned beats prompt-only on voice (reference loss 1.20 vs 2.30)."}
    (scored / "run.json").write_text(json.dumps(record))
    with zipfile.ZipFile(adapter_zip(scored, tmp_path / "scored.zip")) as z:
        card = z.read("README.md").decode()
    assert "## Scorecard\n\nTuned beats prompt-only on voice (reference loss 1.20 vs 2.30)." in card
    assert "Not computed yet" not in card

    # Without any scorecard the card says how to compute one
    unscored = tmp_path / "unscored"
    shutil.copytree(adapter, unscored)
    (unscored / "scorecard.json").unlink()
    with zipfile.ZipFile(adapter_zip(unscored, tmp_path / "unscored.zip")) as z:
        assert "## Scorecard\n\nNot computed yet." in z.read("README.md").decode()


def test_a_folder_that_is_not_an_adapter_is_refused(tmp_path: Path):
    from voicetune.export import adapter_zip, merge

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an adapter")
    message = "notes is not a finished voicetune run: run.json is missing"  # its name, never its path
    with pytest.raises(ValueError) as e:
        adapter_zip(folder, tmp_path / "out.zip")
    assert str(e.value) == message
    with pytest.raises(ValueError) as e:
        merge(folder, tmp_path / "merged")
    assert str(e.value) == message
    with pytest.raises(ValueError, match="^no finished run called 'missing' in this workspace$"):
        adapter_zip(tmp_path / "missing", tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists() and not (tmp_path / "merged").exists()  # nothing written


def test_bad_export_arguments_are_refused_before_any_model_loads(tmp_path: Path):
    from voicetune.export import merge, to_gguf

    with pytest.raises(ValueError, match="^dtype must be one of bf16, fp16, fp32, got 'int8'$"):
        merge(tmp_path, tmp_path / "merged", dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^quant must be 'f16' or 'q8_0', got 'q4_0'$"):
        to_gguf(tmp_path, tmp_path / "m.gguf", quant="q4_0")  # type: ignore[arg-type]
    with pytest.raises(ValueError) as e:
        to_gguf(tmp_path, tmp_path / "m.gguf")
    assert str(e.value) == f"{tmp_path.name} is not a merged model folder: config.json is missing"


# --- the merged model ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_merged_model_answers_like_base_plus_adapter(adapter: Path, merged: Path, merged_replies: list[str]):
    from voicetune.config import GenConfig
    from voicetune.generate import ChatModel, Request

    chat = ChatModel()
    name = chat.load_adapter(adapter)
    gen = GenConfig(max_new_tokens=24)
    tuned = [chat.generate([Request([{"role": "user", "content": p}], name)], gen)[0].text for p in PROMPTS]
    base = [chat.generate([Request([{"role": "user", "content": p}], None)], gen)[0].text for p in PROMPTS]
    assert merged_replies == tuned
    assert merged_replies != base  # the adapter really is in the merged weights

    assert not (merged / "adapter_config.json").exists()
    assert safetensors_dtypes(merged) == {"F32"}
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(merged).chat_template == chat.tokenizer.chat_template
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"] == 2
    assert not list(merged.parent.glob(".fp32.*"))  # the temporary folder was renamed into place


@pytest.mark.slow
def test_bf16_merge_writes_bf16_weights(merged_bf16: Path, merged: Path):
    """bf16 is the fp32 merge rounded once: the adapter is folded in at full precision, then cast."""
    import torch
    from safetensors.torch import load_file

    assert safetensors_dtypes(merged_bf16) == {"BF16"}
    assert json.loads((merged_bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    low, full = load_file(str(merged_bf16 / "model.safetensors")), load_file(str(merged / "model.safetensors"))
    assert low.keys() == full.keys()
    assert all(torch.equal(low[k], full[k].to(torch.bfloat16)) for k in full)


# --- GGUF and Ollama ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_gguf_round_trip_is_exact(gguf_f16: Path, merged: Path, merged_replies: list[str]):
    """transformers' GGUF loader undoes llama.cpp's q/k permutation; every weight comes back as fp16-rounded fp32."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.gguf import read_gguf_metadata

    meta, names = read_gguf_metadata(str(gguf_f16))
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.model"] == "gpt2"
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (9, 3)
    assert meta["tokenizer.ggml.eos_token_id"] == 2 and meta["tokenizer.ggml.add_bos_token"] is False
    assert "token_embd.weight" in names and "output.weight" not in names  # tied embeddings
    assert len(names) == 2 + 30 * 9

    model = AutoModelForCausalLM.from_pretrained(gguf_f16.parent, gguf_file=gguf_f16.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf_f16.parent, gguf_file=gguf_f16.name)
    want = load_file(str(merged / "model.safetensors"))
    got = model.state_dict()
    assert model.config.tie_word_embeddings and got["lm_head.weight"].data_ptr() == got["model.embed_tokens.weight"].data_ptr()
    for k, w in want.items():
        assert torch.equal(got[k], w.half().float()), k

    # f16 rounding could in principle flip a near-tied greedy token; with these weights it does not, so the
    # replies are compared in full.
    assert [greedy(model, tokenizer, p) for p in PROMPTS] == merged_replies

    original = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.chat_template == original.chat_template
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy!"}, {"role": "user", "content": "Bye"}]
    assert tokenizer.apply_chat_template(msgs, tokenize=False) == original.apply_chat_template(msgs, tokenize=False)
    text = "Ahoy, café 2024!\n<|im_start|>user\n  naïve  "
    assert tokenizer(text)["input_ids"] == original(text)["input_ids"]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")


@pytest.mark.slow
def test_modelfile_beside_the_gguf(gguf_f16: Path, merged: Path):
    from voicetune.export import MERGE_RECORD, ollama_modelfile

    text = (gguf_f16.parent / "Modelfile").read_text()
    assert text == ollama_modelfile(gguf_f16, json.loads((merged / MERGE_RECORD).read_text()))
    lines = text.splitlines()
    assert "FROM ./voice-f16.gguf" in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>"' in lines
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in text
    assert '{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant\n{{ end }}' in text
    # SmolLM2's template adds this system turn when a conversation has none; Ollama's SYSTEM does the same.
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in lines


def test_modelfile_refuses_a_template_that_is_not_chatml():
    from voicetune.export import _default_system

    llama3 = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
              "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
    with pytest.raises(ValueError, match="not plain ChatML"):
        _default_system(llama3, "<|begin_of_text|>")
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert _default_system(chatml, "") is None


@pytest.mark.slow
def test_q8_0_writes_and_loads(merged_bf16: Path, tmp_path: Path):
    """Q8_0 from a bf16 merge: matrices in 8-bit blocks, norms in F32, every weight within its block's step."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.gguf import GgufHeader

    from voicetune.export import to_gguf

    out = to_gguf(merged_bf16, tmp_path / "voice-q8_0.gguf", quant="q8_0")
    types = GgufHeader.from_file(str(out)).ggml_types
    assert {t for n, t in types.items() if n.endswith("norm.weight")} == {0}  # F32
    assert {t for n, t in types.items() if not n.endswith("norm.weight")} == {8}  # Q8_0
    assert (tmp_path / "Modelfile").read_text().startswith("# ")

    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name).eval()
    got = model.state_dict()
    for k, w in load_file(str(merged_bf16 / "model.safetensors")).items():
        w = w.float()
        # One Q8_0 step is (block max)/127; rounding costs at most half of one, plus the fp16 scale's rounding.
        assert float((got[k] - w).abs().max()) <= float(w.abs().max()) / 127, k
    reply = greedy(model, AutoTokenizer.from_pretrained(merged_bf16), PROMPTS[0])
    assert reply and "<|im_end|>" not in reply


@pytest.mark.slow
def test_cli_exports_a_run_of_the_workspace(adapter: Path, workspace: Path):
    from tests.conftest import run_cli
    from voicetune import store

    shutil.copytree(adapter, store.run_dir("pirate"))
    result = run_cli("export", "--run", "pirate", "--zip", env={"VOICETUNE_HOME": str(workspace)})
    assert result.returncode == 0, result.stderr
    dest = workspace / "exports" / "pirate" / "pirate-adapter.zip"
    assert result.stdout.strip() == str(dest)
    with zipfile.ZipFile(dest) as z:
        assert z.read("adapter_model.safetensors") == (adapter / "adapter_model.safetensors").read_bytes()

    missing = run_cli("export", "--run", "nobody", "--gguf", env={"VOICETUNE_HOME": str(workspace)})
    assert (missing.returncode, missing.stderr) == (3, "error: no finished run called 'nobody' in this workspace\n")
    assert run_cli("export", "--run", "pirate").returncode == 2  # say what to export: --zip, --merge or --gguf


def test_every_verb_finds_its_run_before_it_converts_or_loads_a_model(tmp_path: Path, workspace: Path):
    """`export --run nobody --zip` and its siblings answer at once, with the run's name and no server folder,
    and leave an empty model cache empty: the run is checked before any base model is converted."""
    from tests.conftest import run_cli

    cache = tmp_path / "empty-cache"
    cache.mkdir()
    env = {"VOICETUNE_HOME": str(workspace), "VOICETUNE_CACHE": str(cache)}
    message = "error: no finished run called 'nobody' in this workspace\n"
    for verb in (["export", "--run", "nobody", "--zip"], ["export", "--run", "nobody", "--gguf"],
                 ["export", "--run", "nobody", "--merge"], ["eval", "--run", "nobody"],
                 ["push", "--run", "nobody", "--repo", "acme/voice"],
                 ["chat", "--adapter", "nobody", "--prompt", "Hi"]):
        result = run_cli(*verb, env=env)
        assert (result.returncode, result.stderr, result.stdout) == (3, message, ""), verb
    half = workspace / "runs" / "half"
    half.mkdir(parents=True)
    (half / "run.json").write_text("{}")
    result = run_cli("export", "--run", "half", "--gguf", env=env)
    assert (result.returncode, result.stderr) == (
        3, "error: half is not a finished voicetune run: adapter_model.safetensors is missing\n")
    assert list(cache.iterdir()) == []
