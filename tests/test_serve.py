"""`radargate serve` over HTTP on loopback, against live servers started as subprocesses.

Tiny runs (radar, top-k, PEFT's LoRA) are trained once for the module; each server is a real
`radargate serve` process. Greedy answers are compared token for token with `generate()`.
"""

from __future__ import annotations

import gc
import http.client
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from radargate.experiment.methods import load_trained
from radargate.serve.engine import Engine, EngineSettings
from radargate.stats import LastCall
from tests.serve_helpers import API_KEY, CONTEXT, LiveServer, save_tiny_model, train_run, write_config

openai = pytest.importorskip("openai", reason="the serving tests talk through the official openai client")

PROMPTS = [
    "The capital of France is", "Once upon a time", "1, 2, 3, 4,", "def fib(n):", "Hello", "A B C D E F G",
    "The quick brown fox jumps over the lazy dog and then", "Q: What is two plus two?\nA:", "Roses are red,",
    "import torch\nimport", "In 1492,", "Translate to French: cheese", "The mitochondria is",
    "Dear Sir or Madam, I am writing to", "x", "Once more, with feeling: the rain in Spain stays mainly in the",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serve")
    config = write_config(folder, save_tiny_model(folder / "tiny-llama", tokenizer))
    return {"config": config, **{method: train_run(config, method) for method in ("radar", "topk", "lora")}}


@pytest.fixture(scope="module")
def radar_server(runs):
    server = LiveServer(str(runs["radar"]), "--max-batch", "16", "--max-queue", "4")
    yield server
    server.close()


def client(server: LiveServer, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0, timeout=120)


def model_id(server: LiveServer) -> str:
    return client(server).models.list().data[0].id


def reference(run: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """What `generate()` returns greedily for the same prompt, outside the server."""
    model, _, _ = load_trained(run)
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=max_new_tokens)
    return output[0, len(prompt_ids):].tolist()


def post(server: LiveServer, path: str, body, headers: dict | None = None) -> tuple[int, dict, dict]:
    """A raw request (bytes are sent as they are), with the API key unless ``headers`` says otherwise."""
    address = urlparse(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}", **(headers or {})}
    connection.request("POST", path, body=payload, headers={k: v for k, v in sent.items() if v is not None})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(data) if data else {}


def health(server: LiveServer) -> dict:
    address = urlparse(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    connection.request("GET", "/health")
    body = json.loads(connection.getresponse().read())
    connection.close()
    return body


def open_stream(server: LiveServer, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A streamed completion whose first event has arrived (so the request is admitted and running)."""
    address = urlparse(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    connection.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}).encode(),
                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: {")
    return connection, response


def read_events(response: http.client.HTTPResponse) -> list[dict]:
    events = []
    for line in response:
        if line.startswith(b"data: {"):
            events.append(json.loads(line[6:]))
    return events


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


# -- correctness -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["radar", "topk", "lora"])
def test_greedy_answers_equal_generate_token_for_token(runs, tokenizer, method):
    server = LiveServer(str(runs[method]))
    try:
        api, name = client(server), model_id(server)
        prompt = "The quick brown fox"
        expected = reference(runs[method], tokenizer(prompt)["input_ids"], 24)
        whole = api.completions.create(model=name, prompt=prompt, max_tokens=24, temperature=0,
                                       extra_body={"return_token_ids": True})
        assert whole.choices[0].token_ids == expected
        assert whole.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
        assert whole.usage.completion_tokens == len(expected)
        chunks = list(api.completions.create(model=name, prompt=prompt, max_tokens=24, temperature=0, stream=True,
                                             extra_body={"return_token_ids": True}))
        assert [token for chunk in chunks for token in chunk.choices[0].token_ids] == expected
        assert "".join(chunk.choices[0].text for chunk in chunks) == whole.choices[0].text

        messages = [{"role": "user", "content": "Name a colour."}]
        chat_ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                      return_dict=False))
        expected_chat = reference(runs[method], chat_ids, 16)
        chat = api.chat.completions.create(model=name, messages=messages, max_tokens=16, temperature=0)
        assert chat.choices[0].message.content == tokenizer.decode(expected_chat, skip_special_tokens=True)
        assert chat.usage.prompt_tokens == len(chat_ids)
        streamed = api.chat.completions.create(model=name, messages=messages, max_tokens=16, temperature=0,
                                               stream=True, extra_body={"return_token_ids": True})
        assert [t for chunk in streamed for t in (getattr(chunk.choices[0], "token_ids", None) or [])] == expected_chat
    finally:
        server.close()


def test_concurrent_requests_each_equal_their_solo_answer(radar_server):
    """16 prompts of different lengths and budgets: alone one after another, then all at once, joining and
    leaving mid-generation. Batching mixes no state between requests."""
    api, name = client(radar_server), model_id(radar_server)

    def ask(index: int, delay: float = 0.0) -> list[int]:
        time.sleep(delay)
        answer = api.completions.create(model=name, prompt=PROMPTS[index], max_tokens=4 + 3 * index, temperature=0,
                                        extra_body={"return_token_ids": True})
        return answer.choices[0].token_ids

    alone = [ask(index) for index in range(len(PROMPTS))]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(ask, range(len(PROMPTS)), [0.03 * (i % 5) for i in range(len(PROMPTS))]))
    assert together == alone
    assert [len(tokens) for tokens in alone] == [4 + 3 * i for i in range(len(PROMPTS))]  # tiny model: no EOS


def test_ignore_eos_generates_past_the_end_of_sequence_token(runs, tmp_path):
    """The tiny model never picks its own EOS token, so a copy names the token it greedily picks fourth as EOS."""
    model_dir = Path(yaml.safe_load(runs["config"].read_text())["model"]["name"])
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt_ids = AutoTokenizer.from_pretrained(model_dir)("Hello")["input_ids"]
    with torch.no_grad():
        greedy = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=12, min_new_tokens=12,
                                eos_token_id=None)[0, len(prompt_ids):].tolist()
    end = next(index for index, token in enumerate(greedy) if index >= 3 and token not in greedy[:index])
    shutil.copytree(model_dir, tmp_path / "model")
    model.generation_config.eos_token_id = greedy[end]
    model.generation_config.save_pretrained(tmp_path / "model")
    config = write_config(tmp_path, tmp_path / "model")
    server = LiveServer("--config", str(config))
    try:
        api, name = client(server), model_id(server)

        def complete(**extra) -> tuple[list[int], str]:
            choice = api.completions.create(model=name, prompt="Hello", max_tokens=12, temperature=0,
                                            extra_body={"return_token_ids": True, **extra}).choices[0]
            return choice.token_ids, choice.finish_reason

        assert complete() == (greedy[:end + 1], "stop")
        assert complete(ignore_eos=True) == (greedy, "length")
    finally:
        server.close()


def test_seeded_sampling_is_reproducible_alone_or_in_a_batch(radar_server):
    api, name = client(radar_server), model_id(radar_server)

    def sample(seed: int) -> str:
        answer = api.completions.create(model=name, prompt="Once upon a time", max_tokens=20, temperature=1.0,
                                        top_p=0.9, seed=seed)
        return answer.choices[0].text

    alone = sample(7)
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(sample, [7, 7, 8, 7, 9, 7]))
    assert together[0] == together[1] == together[3] == together[5] == alone
    assert len({alone, together[2], together[4]}) == 3  # other seeds, other texts


def test_stop_string_ends_the_text_before_it(radar_server, tokenizer):
    api, name = client(radar_server), model_id(radar_server)
    full = api.completions.create(model=name, prompt="Hello", max_tokens=20, temperature=0).choices[0].text
    stop = full[5:8]
    cut = api.completions.create(model=name, prompt="Hello", max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = api.completions.create(model=name, prompt="Hello", max_tokens=20, temperature=0, stop=stop, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == full[:full.index(stop)]


def test_routing_equals_the_routing_statistics_of_the_same_forward_pass(radar_server, runs, tokenizer):
    api, name = client(radar_server), model_id(radar_server)
    prompt = "Roses are red,"
    answer = api.completions.create(model=name, prompt=prompt, max_tokens=8, temperature=0,
                                    extra_body={"return_token_ids": True, "return_routing": True})
    generated, routing = answer.choices[0].token_ids, answer.choices[0].routing
    assert len(routing) == len(generated) == 8
    model, _, _ = load_trained(runs["radar"])
    prompt_ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad(), model.record_routing(LastCall) as stats:
        model(input_ids=torch.tensor([prompt_ids + generated[:-1]]))
    positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(generated))
    expected_weights = torch.stack([layer.weights[positions] for layer in stats.values()], dim=1)
    expected_theta = torch.stack([layer.theta[positions] for layer in stats.values()], dim=1)
    torch.testing.assert_close(torch.tensor([token["weights"] for token in routing]), expected_weights,
                               atol=2e-4, rtol=0)
    torch.testing.assert_close(torch.tensor([token["theta"] for token in routing]), expected_theta,
                               atol=2e-4, rtol=0)


def test_metrics_report_requests_latency_batches_and_expert_usage(radar_server):
    api, name = client(radar_server), model_id(radar_server)
    api.completions.create(model=name, prompt="Hello", max_tokens=5, temperature=0)
    address = urlparse(radar_server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    assert 'radargate_requests_total{route="/v1/completions",status="200"}' in text
    for series in ("radargate_queue_depth", "radargate_batch_size_count", "radargate_generated_tokens_total",
                   "radargate_time_to_first_token_seconds_count", "radargate_inter_token_latency_seconds_count",
                   "radargate_generation_tokens_per_second"):
        assert series in text
    shares = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("radargate_expert_usage_share{") and 'layer="model.layers.0.self_attn.q_proj"' in line]
    assert len(shares) == 3 and sum(shares) == pytest.approx(1.0)


# -- bad input: a clear error naming the field, and the server lives on ------------------------------


@pytest.mark.parametrize(("body", "status", "param"), [
    (b'{"model": "radar", "prompt": "Hi", ', 400, "body"),
    ({"model": "radar", "prompt": 42}, 400, "prompt"),
    ({"model": "radar", "prompt": ""}, 400, "prompt"),
    ({"model": "radar", "prompt": []}, 400, "prompt"),
    ({"model": "radar", "prompt": "Hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "radar", "prompt": "Hi", "max_tokens": -3}, 400, "max_tokens"),
    ({"model": "radar", "prompt": "Hi", "max_tokens": CONTEXT}, 400, "max_tokens"),
    ({"model": "radar", "prompt": "word " * (CONTEXT + 10)}, 400, "prompt"),
    ({"model": "radar", "prompt": "Hi", "temperature": "hot"}, 400, "temperature"),
    ({"model": "radar", "prompt": "Hi", "top_p": 0}, 400, "top_p"),
    ({"model": "radar", "prompt": "Hi", "n": 2}, 400, "n"),
    ({"model": "radar", "prompt": "Hi", "best_of": 2}, 400, "best_of"),
    ({"model": "radar", "prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "radar", "prompt": [10, 99999999]}, 400, "prompt"),
    ({"model": "nope", "prompt": "Hi"}, 404, "model"),
    ({"model": "radar", "prompt": "x" * (2 << 20)}, 413, "body"),
])
def test_bad_completion_requests_get_an_error_naming_the_field(radar_server, body, status, param):
    code, _, answer = post(radar_server, "/v1/completions", body)
    assert code == status
    assert answer["error"]["param"] == param and answer["error"]["message"]
    assert health(radar_server)["status"] == "ok"


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "radar", "messages": []}, "messages"),
    ({"model": "radar"}, "messages"),
    ({"model": "radar", "messages": [{"role": "wizard", "content": "Hi"}]}, "messages.0.role"),
    ({"model": "radar", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"model": "radar", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "radar", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": CONTEXT}, "max_tokens"),
    ({"model": "radar", "messages": [{"role": "user", "content": "word " * CONTEXT}]}, "messages"),
])
def test_bad_chat_requests_get_an_error_naming_the_field(radar_server, body, param):
    code, _, answer = post(radar_server, "/v1/chat/completions", body)
    assert code == 400
    assert answer["error"]["param"] == param


def test_a_missing_or_wrong_api_key_is_refused(radar_server):
    body = {"model": "radar", "prompt": "Hi", "max_tokens": 2}
    code, _, answer = post(radar_server, "/v1/completions", body, headers={"Authorization": None})
    assert code == 401 and answer["error"]["code"] == "missing_api_key"
    code, _, answer = post(radar_server, "/v1/completions", body, headers={"Authorization": "Bearer wrong"})
    assert code == 401 and answer["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(radar_server, api_key="wrong").models.list()
    assert post(radar_server, "/v1/completions", body)[0] == 200


# -- load and faults -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(runs):
    """One request at a time and one waiting: easy to fill."""
    server = LiveServer("--config", str(runs["config"]), "--max-batch", "1", "--max-queue", "1")
    yield server
    server.close()


def test_a_full_queue_answers_429_with_retry_after_and_the_admitted_finish(small_server):
    name = model_id(small_server)
    long = {"model": name, "prompt": "Once upon a time", "max_tokens": 300, "temperature": 0}
    connection, running = open_stream(small_server, long)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(post, small_server, "/v1/completions", {**long, "max_tokens": 20})
        assert wait_for(lambda: health(small_server)["active_requests"] == 2)
        code, headers, answer = post(small_server, "/v1/completions", {**long, "max_tokens": 2})
        assert code == 429 and int(headers["retry-after"]) >= 1
        assert answer["error"]["type"] == "rate_limit_error"
        events = read_events(running)
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert waiting.result()[0] == 200
    connection.close()


def test_a_client_that_disconnects_frees_its_place(small_server):
    name = model_id(small_server)
    generated_before = generated_tokens(small_server)
    connection, _ = open_stream(small_server, {"model": name, "prompt": "Hello", "max_tokens": 900,
                                               "temperature": 0})
    connection.close()
    assert wait_for(lambda: health(small_server)["active_requests"] == 0, timeout=20)
    assert generated_tokens(small_server) - generated_before < 900  # cancelled, not run to its end
    code, _, answer = post(small_server, "/v1/completions", {"model": name, "prompt": "Hi", "max_tokens": 3,
                                                             "temperature": 0})
    assert code == 200 and answer["usage"]["completion_tokens"] == 3


def generated_tokens(server: LiveServer) -> float:
    address = urlparse(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    return float(next(line.split()[1] for line in text.splitlines()
                      if line.startswith("radargate_generated_tokens_total")))


def test_sigterm_drains_the_running_requests_and_exits_0(runs):
    server = LiveServer("--config", str(runs["config"]))
    try:
        name = model_id(server)
        connection, running = open_stream(server, {"model": name, "prompt": "Hello", "max_tokens": 120,
                                                   "temperature": 0})
        server.process.send_signal(15)
        events = read_events(running)
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert sum(len(event["choices"][0]["text"]) > 0 for event in events) > 0
        connection.close()
        assert server.process.wait(timeout=120) == 0
        with pytest.raises(OSError):
            health(server)
    finally:
        server.close()


def test_the_engine_keeps_the_model_out_of_garbage_collection_while_it_runs(runs):
    """``Engine.start`` freezes the objects alive then (the model's) out of the collector's generations, and
    ``stop`` gives them back: a test process or a library user starting and stopping engines keeps collecting."""
    engine = Engine.load(runs["radar"], settings=EngineSettings(max_batch=2))
    gc.unfreeze()
    engine.start()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > sum(1 for _ in engine.model.parameters())
    finally:
        engine.stop()
    assert gc.get_freeze_count() == 0


def test_a_damaged_run_folder_refuses_to_start_with_the_loaders_error(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs["radar"], broken)
    weights = next((broken / "adapter").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError) as loader_error:
        load_trained(broken)
    with pytest.raises(RuntimeError, match="exited with 2") as failure:
        LiveServer(str(broken))
    assert str(loader_error.value) in str(failure.value)


# -- the routing page, in a real browser ---------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium found (apt-get install chromium): the routing page is tested in a real browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright drives the browser")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_routing_page_colours_each_token_by_its_leading_expert(radar_server, browser, tmp_path):
    """Type a prompt, watch it stream: each token's colour is the expert that weighed most (averaged over layers,
    then for a chosen layer), as the API's routing for the same greedy request says; hovering shows the weights
    and RadarGate's angles."""
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.goto(radar_server.url + "/")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelectorAll('#layer option').length > 1")
    page.select_option("#mode", "completion")
    page.fill("#prompt", "Roses are red,")
    page.fill("#max-tokens", "12")
    page.click("#send")
    page.wait_for_selector("#answer[data-done='true']", timeout=60_000)
    shown = page.eval_on_selector_all(".token", "spans => spans.map(s => [s.dataset.tokenIds, s.dataset.expert])")

    answer = client(radar_server).completions.create(
        model="radar", prompt="Roses are red,", max_tokens=12, temperature=0,
        extra_body={"return_token_ids": True, "return_routing": True})
    routing = [torch.tensor(token["weights"]) for token in answer.choices[0].routing]
    assert [int(ids) for ids, _ in shown] == answer.choices[0].token_ids  # one span per token here
    assert [int(expert) for _, expert in shown] == [int(w.mean(0).argmax()) for w in routing]

    page.select_option("#layer", "3")
    by_layer = page.eval_on_selector_all(".token", "spans => spans.map(s => Number(s.dataset.expert))")
    assert by_layer == [int(w[3].argmax()) for w in routing]

    page.hover(".token >> nth=2")
    tip = page.inner_text("#tip")
    assert "expert  weight  rotation" in tip and "°" in tip and "model.layers.1.self_attn.v_proj" in tip
    page.screenshot(path=str(tmp_path / "routing-page.png"))
    assert (tmp_path / "routing-page.png").stat().st_size > 10_000
    page.close()
