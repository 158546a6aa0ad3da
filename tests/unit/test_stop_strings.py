"""Stop strings: generation stops once the answer is complete (each task's Example.stop_strings), in both
backends alike, with max_new_tokens still the cap; the answers and rewards are those of the uncut text
where the stop comes after the answer.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
from types import SimpleNamespace

import pytest

from randopt_hpc.backends.base import BaseBackend, cut_at_stop_string, stop_string_end
from randopt_hpc.backends.hf import HFBackend
from randopt_hpc.tasks import TASKS, countdown, countdown_qa, humaneval, mbpp, task_class, uspto50k
from randopt_hpc.tasks.base import score_all
from randopt_hpc.tasks.multi import tagged
from tests.archs import one_thread, short_examples
from tools.make_tiny_model import build_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "models", "demo")
DEMO_TEMPLATE = "Q: use {numbers} and make {target} A:"   # configs/demo.yaml


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


# ---------------------------------------------------------------------------- the cut
@pytest.mark.parametrize("text, strings, end", [
    ("ab</answer>cd", ("</answer>",), 11),
    ("ab\ncd\n", ("\n",), 3),
    ("abcd", ("\n",), None),
    ("abcd", (), None),
    ("abcd", ("",), None),                        # an empty string never stops
    ("xx</answer>\n", ("\n", "</answer>"), 11),   # the one that completes first, whatever the order
    ("a\nb</answer>", ("</answer>", "\n"), 2),
])
def test_stop_string_end(text, strings, end):
    assert stop_string_end(text, strings) == end


VOCAB = {1: "ab", 2: "</", 3: "answer>", 4: "x\ny", 5: "c", 6: "</answer>tail"}


def _decode(ids):
    return "".join(VOCAB[i] for i in ids)


@pytest.mark.parametrize("ids, strings, cut", [
    ([1, 2, 3, 5, 5], ("</answer>",), [1, 2, 3]),   # split over two tokens: the one completing it is last
    ([1, 6, 5], ("</answer>",), [1, 6]),            # inside a token that carries more text
    ([1, 4, 5], ("\n",), [1, 4]),
    ([1, 4, 2, 3], ("</answer>", "\n"), [1, 4]),
    ([1, 2, 5], ("</answer>",), None),
    ([1, 2, 3], (), None),
    ([], ("\n",), None),
])
def test_cut_at_stop_string(ids, strings, cut):
    assert cut_at_stop_string(ids, strings, _decode) == cut


class _Canned(BaseBackend):
    """Answers fixed token ids, as a backend's generate_ids would, without cutting them."""

    def __init__(self, rows, stop_strings=True):
        super().__init__()
        self.tokenizer, self.rows, self.stop_ids = build_tokenizer(), rows, [2]
        self.use_stop_strings = stop_strings

    def generate_ids(self, examples, sampling=None):
        return self.rows

    def prompt_lengths(self, examples):
        return [len(self.tokenizer(ex.prompt)["input_ids"]) for ex in examples]


def _with_stops(examples, *strings):
    return [dataclasses.replace(ex, stop_strings=s) for ex, s in zip(examples, strings)]


def test_complete_cuts_after_the_stop_string_and_counts_to_the_token_that_completed_it():
    tok = build_tokenizer()
    enc = lambda s: tok(s)["input_ids"]   # noqa: E731  (one id per character)
    rows = [enc("<think>a</think><answer>1+2</answer>\nmore"), enc("12\n34"), enc("12") + [2] + enc("\n"),
            enc("12\n") + [2], enc("no stop here"), enc("1\n2")]
    ex = _with_stops(short_examples(6), ("</answer>",), ("\n",), ("\n",), ("\n",), ("\n",), ())
    done = _Canned(rows).complete(ex)
    assert [c.text for c in done] == ["<think>a</think><answer>1+2</answer>", "12\n", "12", "12\n", "no stop here",
                                      "1\n2"]
    assert [c.finish for c in done] == ["stop", "stop", "eos", "stop", "length", "length"]
    assert [c.gen_tokens for c in done] == [len("<think>a</think><answer>1+2</answer>"), 3, 3, 3, 12, 3]
    # Off (generation.stop_strings: false): every row as before, to its stop id or the cap.
    off = _Canned(rows, stop_strings=False).complete(ex)
    assert [c.text for c in off] == [tok.decode(r) for r in rows[:2]] + ["12", "12\n", "no stop here", "1\n2"]
    assert [c.gen_tokens for c in off] == [len(rows[0]), 5, 3, 4, 12, 3]
    assert [c.finish for c in off] == ["length", "length", "eos", "eos", "length", "length"]


# ---------------------------------------------------------------------------- the tasks
ROWS = {
    "countdown": {"numbers": [1, 2, 3], "target": 6},
    "countdown_qa": {"numbers": [1, 2, 3], "target": 6},
    "gsm8k": {"question": "q", "answer": "so #### 5"},
    "math500": {"problem": "p", "answer": "5"},
    "olympiadbench": {"question": "q", "final_answer": ["5"]},
    "mbpp": {"text": "t", "test_list": ["assert f() == 1"]},
    "humaneval": {"prompt": "def f():\n", "test": "def check(c):\n    pass\n", "entry_point": "f"},
    "rocstories": {"title": "t", "shuffled_sentences": ["a", "b", "c", "d", "e"], "gold_order": [0, 1, 2, 3, 4]},
    "uspto50k": {"rxn_smiles": "CC>>CC", "class": 1},
    "toy_signal": {"context": [0.0] * 10, "future": [0.0] * 60},
    "demo_mul": {"prompt": "Q: 2*3= A:", "answer": "6"},
    "demo_eval": {"prompt": "Q: 2+3*4= A:", "answer": "14"},
    "demo_verify": {"prompt": "Q: 2+3*4=14? A:", "answer": "yes"},
}
EXPECTED = {"countdown": ("</answer>",), "countdown_qa": ("\n",), "mbpp": ("</answer>",), "humaneval": ("</answer>",),
            "uspto50k": ("</answer>",), "demo_mul": ("\n",), "demo_eval": ("\n",), "demo_verify": ("\n",)}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_declares_its_stop_strings_and_its_examples_carry_them(name):
    task = task_class(name)()
    assert task.stop_strings == EXPECTED.get(name, ())
    (ex,) = task.examples_from_records([ROWS[name]])
    assert ex.stop_strings == task.stop_strings
    # With several tasks on one population, each example keeps its own task's strings.
    assert tagged([ex], name)[0].stop_strings == task.stop_strings


def test_countdown_prompt_styles_stop_alike():
    for style in countdown.STYLES:
        (ex,) = countdown.Countdown(style).examples_from_records([ROWS["countdown"]])
        assert ex.stop_strings == ("</answer>",)


def _cut(text, strings):
    end = stop_string_end(text, strings)
    return text if end is None else text[:end]


ANSWER = "<think>1+2=3, 3+3=6</think>\n<answer>1 + 2 + 3</answer>"


@pytest.mark.parametrize("score, example, text", [
    # Countdown: the format wants the text to end at the closing tag (one final newline allowed).
    (countdown.score, ROWS["countdown"], ANSWER[len("<think>"):]),
    (countdown.score, ROWS["countdown"], ANSWER[len("<think>"):] + "\n"),
    (countdown.score, ROWS["countdown"], "no tags at all, 1 + 2 + 3"),
    (countdown_qa.score, ROWS["countdown_qa"], " 1+2+3\nQ: use 1 2 3 to make 6 A: 3*2*1"),
    (countdown_qa.score, ROWS["countdown_qa"], "\n1+2+3"),
    (countdown_qa.score, ROWS["countdown_qa"], " 1+2+3"),
    (uspto50k.score, ROWS["uspto50k"], "it is an alkylation <answer>1</answer> so not 3 or 7"),
    (uspto50k.score, ROWS["uspto50k"], "class 1, not 3"),
])
def test_answers_end_before_the_stop(score, example, text):
    name = {countdown.score: "countdown", countdown_qa.score: "countdown_qa", uspto50k.score: "uspto50k"}[score]
    (ex,) = task_class(name)().examples_from_records([example])
    assert score(_cut(text, ex.stop_strings), ex) == score(text, ex)


@pytest.mark.parametrize("module", [mbpp, humaneval])
@pytest.mark.parametrize("text", [
    "<think>easy</think>\n<answer>\ndef f():\n    return 1\n</answer>\nThat is all.\n```python\nprint(2)\n```",
    "```python\ndef f():\n    return 1\n```\nno tags",
])
def test_code_is_complete_at_the_closing_tag(module, text):
    assert module.extract_code(_cut(text, module.STOP_STRINGS)) == module.extract_code(text)


@pytest.mark.parametrize("skill", ["demo_mul", "demo_eval", "demo_verify"])
def test_demo_skills_read_only_the_first_line(skill):
    task = task_class(skill)()
    (ex,) = task.examples_from_records([ROWS[skill]])
    for text in (" 6\nQ: 1*1= A: 1", " 2+3*4=14\n", " yes"):
        assert task.score(_cut(text, ex.stop_strings), ex) == task.score(text, ex)


# ---------------------------------------------------------------------------- the HF backend
@pytest.fixture(scope="module")
def demo():
    return HFBackend(DEMO, "float32", max_new_tokens=12, batch_size=4, noise_impl="torch")


@pytest.fixture(scope="module")
def demo_examples():
    task = countdown_qa.CountdownQA(DEMO_TEMPLATE)
    return task.examples_from_records(task.synthetic_records(50, 0))


def _free(backend, examples, sampling=None):
    """What the backend generates without any stop string."""
    backend.use_stop_strings = False
    try:
        return backend.generate_ids(examples, sampling), backend.complete(examples, sampling)
    finally:
        backend.use_stop_strings = True


def test_hf_rows_stop_at_their_own_strings(demo, demo_examples):
    """Rows of one batch with different stop strings (several tasks) each stop at their own; the ids are
    the uncut generation's up to the token completing the string (a two-character string spans two
    tokens of the demo's character tokenizer), the text ends with the string."""
    ex = _with_stops(demo_examples[:6], ("+",), ("4+", "-"), (), ("\n",), ("*", "+"), ("no such text",))
    free_ids, free = _free(demo, ex)
    got_ids, got = demo.generate_ids(ex), demo.complete(ex)
    tok = demo.tokenizer
    for i, (e, row, c) in enumerate(zip(ex, free_ids, free)):
        end = stop_string_end(c.text, e.stop_strings)
        if end is None:
            assert got_ids[i] == row and got[i] == c
            continue
        k = cut_at_stop_string(row, e.stop_strings, lambda ids: tok.decode(ids, skip_special_tokens=True))
        assert got_ids[i] == k and got[i].gen_tokens == len(k) < c.gen_tokens
        assert got[i].text == c.text[:end] and got[i].finish == "stop"
    assert [stop_string_end(c.text, e.stop_strings) is not None for e, c in zip(ex, free)] == \
        [True, True, False, False, True, False]


def test_hf_batch_ends_when_every_row_has_stopped(demo, demo_examples, monkeypatch):
    ex = _with_stops(demo_examples[:4], *[("+", "-", "*")] * 4)
    lengths = []
    generate = demo.model.generate

    def spy(*args, **kwargs):
        out = generate(*args, **kwargs)
        lengths.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(demo.model, "generate", spy)
    free_ids, _ = _free(demo, ex)
    got = demo.generate_ids(ex)
    assert lengths[0] == max(map(len, free_ids)) and lengths[-1] == max(map(len, got)) < lengths[0]


def test_hf_samples_stop_too(demo, demo_examples):
    from randopt_hpc.sampling import Sampling

    hot = Sampling(temperature=1.0, top_p=0.95, seed=3, index=0)
    ex = _with_stops(demo_examples[:4], *[("+",)] * 4)
    free_ids, _ = _free(demo, ex, hot)
    decode = lambda ids: demo.tokenizer.decode(ids, skip_special_tokens=True)   # noqa: E731
    assert demo.generate_ids(ex, hot) == [cut_at_stop_string(r, ("+",), decode) or r for r in free_ids]


def test_from_config_reads_the_switch_on_by_default(monkeypatch):
    from randopt_hpc.config import from_dict

    seen = []
    monkeypatch.setattr(HFBackend, "__init__", lambda self, *a, **kw: seen.append(kw["stop_strings"]))
    cfg = from_dict({"model": {"path": DEMO}, "backend": "hf"})
    HFBackend.from_config(cfg, DEMO)
    off = dataclasses.replace(cfg, generation=SimpleNamespace(**{**vars(cfg.generation), "stop_strings": False}))
    HFBackend.from_config(off, DEMO)
    assert seen == [True, False]


def test_vllm_requests_stop_alike():
    """vLLM keeps the stop string in its text as complete() does, and decodes text only where it must."""
    pytest.importorskip("vllm")
    from randopt_hpc.backends.vllm import VLLMBackend
    from randopt_hpc.sampling import Sampling

    b = object.__new__(VLLMBackend)
    b.sampling, b.stop_ids = SimpleNamespace(max_tokens=7), [2]
    p = b._params(("</answer>",))
    assert (p.stop, p.include_stop_str_in_output, p.detokenize, p.max_tokens, p.temperature) == \
        (["</answer>"], True, True, 7, 0.0)
    assert b._params(()).detokenize is False and not b._params(()).stop
    s = b._params(("\n",), Sampling(1.0, 0.9, 3, 0), "x")
    assert (s.stop, s.include_stop_str_in_output, s.seed) == (["\n"], True, Sampling(1.0, 0.9, 3, 0).row_seed("x"))


# ---------------------------------------------------------------------------- the demo: results unchanged
def test_demo_answers_and_rewards_are_unchanged_and_fewer_tokens_are_generated(demo, demo_examples):
    """configs/demo.yaml's task (countdown_qa, its template) on 50 train problems: the base model and
    perturbed candidates answer and score the same with and without the newline stop. The demo model
    ends its answers with EOS, so at the demo's sigmas there is nothing to save; a candidate far out
    (sigma 0.2) writes past a newline, and there the stop saves tokens."""
    task = countdown_qa.CountdownQA(DEMO_TEMPLATE)
    tokens = {True: [], False: []}
    for cand in [None, (0, 1e-2), (1, 2e-2), (0, 0.2), (1, 0.2)]:
        out = {}
        for on in (False, True):
            demo.use_stop_strings = on
            if cand:
                demo.perturb(*cand)
            try:
                done = demo.complete(demo_examples)
            finally:
                if cand:
                    demo.restore()
                demo.use_stop_strings = True
            out[on] = [(s.answer, s.reward, s.key, s.correct) for s in
                       score_all(task, [c.text for c in done], demo_examples)], [c.gen_tokens for c in done]
            tokens[on] += out[on][1]
        assert out[True][0] == out[False][0], cand
        assert all(a <= b for a, b in zip(out[True][1], out[False][1])), cand
    print(f"mean gen_tokens: {statistics.mean(tokens[False]):.3f} without stop strings, "
          f"{statistics.mean(tokens[True]):.3f} with")
    assert sum(tokens[True]) < sum(tokens[False])


@pytest.mark.integration
@pytest.mark.slow
def test_vllm_stops_where_hf_does(demo, demo_examples):
    """The same stop strings, split over tokens or not, one batch mixing them: vLLM's text, token counts
    and finish reasons are the HF backend's, greedy (base and perturbed) and sampled."""
    pytest.importorskip("vllm")
    from randopt_hpc.backends.vllm import VLLMBackend
    from randopt_hpc.sampling import Sampling
    from tests.integration.conftest import engines_in_this_process

    engines_in_this_process()
    vb = VLLMBackend(DEMO, "float32", max_new_tokens=12, batch_size=64, max_model_len=128, kv_cache_gib=0.25,
                     engine_args={"block_size": 32})
    kinds = [("+",), ("4+", "-"), (), ("\n",), ("*", "+"), ("no such text",), ("1",), ("+1", "-1")]
    ex = _with_stops(demo_examples[:40], *(kinds * 5))
    views = lambda done: [(c.text, c.gen_tokens, c.finish, c.prompt_tokens) for c in done]   # noqa: E731
    assert views(vb.complete(ex)) == views(demo.complete(ex))
    assert sum(c.finish == "stop" for c in demo.complete(ex)) >= 15
    for seed, sigma in ((0, 1e-2), (1, 0.2)):
        vb.perturb(seed, sigma)
        demo.perturb(seed, sigma)
        try:
            assert views(vb.complete(ex)) == views(demo.complete(ex)), (seed, sigma)
        finally:
            vb.restore()
            demo.restore()
    hot = Sampling(temperature=1.0, top_p=0.95, seed=3, index=0)
    got = vb.complete(ex, hot)   # another generator than HF's: only each one's own cut can be checked
    free = _free(vb, ex, hot)[1]
    for e, c, f in zip(ex, got, free):
        end = stop_string_end(f.text, e.stop_strings)
        assert c.text == (f.text if end is None else f.text[:end]) and c.gen_tokens <= f.gen_tokens
