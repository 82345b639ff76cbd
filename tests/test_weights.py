"""Pretrained weights by name (tinymixer/transfer/weights.py), against a server on the loopback address: fetched and
cached, used again without the server, a cut transfer resumed, wrong or truncated files refused with nothing left,
offline and typo messages; timm's safetensors read without PyTorch."""

from __future__ import annotations

import http.server
import io
import os
import re
import threading

import numpy as np
import pytest

import tinymixer as tm
from tinymixer.transfer import convert, weights
from tinymixer.transfer.weights import Weights, WeightsError
from tinymixer.util.safetensors import SafetensorsError, read_safetensors, write_safetensors

pytestmark = pytest.mark.host  # files and HTTP


class Server:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1 with HTTP Range support; ``cut_after`` bytes, when set,
    ends the next response early (the headers promise the whole file); ``requests`` logs (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: int | None = None
        self.ranges_from_zero = False  # answer a Range request with 206 and the whole file, from byte 0
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 -- the http.server name
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and server.ranges_from_zero:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
                elif match:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[:server.cut_after], None
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    s = Server()
    monkeypatch.setenv("TINYMIXER_WEIGHTS", str(tmp_path / "cache"))
    monkeypatch.setenv("TINYMIXER_WEIGHTS_URL", s.url + "/official")
    monkeypatch.setenv("TINYMIXER_TIMM_URL", s.url + "/hub")
    yield s
    s.stop()


def micro_model(seed: int = 3, num_classes: int = 10) -> tm.MlpMixer:
    model = tm.MlpMixer.from_name("micro/4", num_classes=num_classes, image_size=32, seed=seed)
    rng = np.random.default_rng(seed)
    for v in model.params.values():
        v[...] += 0.1 * rng.standard_normal(v.shape)  # a non-zero head: the logits tell models apart
    return model


def npz_bytes(model) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **convert.official_params(model))
    return buffer.getvalue()


MICRO = Weights("test/Mixer-micro_4", "test/Mixer-micro_4.npz", "official", "nothing (a test)", "micro/4", 10,
                0.5, image_size=32, aliases=("Mixer-micro",))


@pytest.fixture
def micro(server, monkeypatch):
    """A registered official-layout entry served by ``server``; returns (model, its bytes)."""
    monkeypatch.setitem(weights.REGISTRY, MICRO.name, MICRO)
    model = micro_model()
    data = npz_bytes(model)
    server.files["/official/" + MICRO.path] = data
    return model, data


def same_weights(a, b) -> None:
    assert set(a.params) == set(b.params)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)


def test_a_name_is_fetched_once_verified_cached_and_used_without_the_server(server, micro, tmp_path):
    model, data = micro
    said = []
    path = weights.fetch_weights("Mixer-micro", say=said.append)  # by its alias
    assert path == tmp_path / "cache" / MICRO.path and path.read_bytes() == data
    assert said and said[0].startswith("downloading test/Mixer-micro_4, 0 MiB, once") and server.url in said[0]
    record = path.with_name(path.name + ".sha256").read_text()
    assert len(record.split()[0]) == 64
    server.stop()  # offline from here on
    loaded = tm.pretrained("test/Mixer-micro_4")
    same_weights(loaded, model)
    assert len(server.requests) == 1


def test_a_cut_transfer_is_resumed_where_it_stopped(server, micro):
    model, data = micro
    server.cut_after = len(data) // 3
    with pytest.raises(WeightsError, match=r"stopped after .* run the same command again to resume"):
        weights.fetch_weights(MICRO.name, say=lambda _: None)
    part = MICRO.cache_path.with_name(MICRO.cache_path.name + ".part")
    assert part.stat().st_size == len(data) // 3 and not MICRO.cache_path.exists()
    said = []
    path = weights.fetch_weights(MICRO.name, say=said.append)
    assert "resuming at" in said[0]
    assert server.requests[-1][1] == f"bytes={len(data) // 3}-"  # only the rest was asked for
    assert path.read_bytes() == data and not part.exists()
    same_weights(tm.pretrained(MICRO.name), model)


@pytest.mark.parametrize("damage", ["truncated", "another model", "not an archive", "nan"])
def test_a_wrong_file_is_refused_and_nothing_is_left(server, micro, damage, tmp_path):
    model, data = micro
    if damage == "truncated":
        bad = data[:len(data) // 2]
    elif damage == "another model":
        bad = npz_bytes(tm.MlpMixer.from_name("micro/4", num_classes=7, image_size=32))
    elif damage == "not an archive":
        bad = b"<html><body>Sign in to continue</body></html>"
    else:
        params = convert.official_params(model)
        params["head/bias"][0] = np.nan
        buffer = io.BytesIO()
        np.savez(buffer, **params)
        bad = buffer.getvalue()
    server.files["/official/" + MICRO.path] = bad
    with pytest.raises(WeightsError, match="failed verification and was deleted") as caught:
        weights.fetch_weights(MICRO.name, say=lambda _: None)
    assert "\n" not in str(caught.value)
    assert {"truncated": "not a readable", "another model": "shapes head/kernel", "not an archive": "not a readable",
            "nan": "not finite"}[damage] in str(caught.value)
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []


def test_a_changed_cached_file_is_noticed_deleted_and_fetched_again(server, micro):
    model, data = micro
    path = weights.fetch_weights(MICRO.name, say=lambda _: None)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one byte flipped
    path.write_bytes(bytes(raw))
    said = []
    again = weights.fetch_weights(MICRO.name, say=said.append)
    assert "SHA-256 changed" in said[0] and "deleted" in said[0]
    assert again.read_bytes() == data and len(server.requests) == 2


def test_a_copy_fetched_by_hand_is_verified_and_used_offline(server, micro):
    model, data = micro
    server.stop()
    MICRO.download_path.parent.mkdir(parents=True)
    MICRO.download_path.write_bytes(data)
    same_weights(tm.pretrained(MICRO.name), model)
    assert MICRO.cache_path.with_name(MICRO.cache_path.name + ".sha256").exists()
    assert server.requests == []


def test_offline_is_one_line_with_the_url_and_the_command_to_fetch_it(server, micro, monkeypatch):
    server.stop()
    with pytest.raises(WeightsError) as caught:
        weights.fetch_weights(MICRO.name, say=lambda _: None)
    message = str(caught.value)
    assert "\n" not in message and "cannot reach" in message and MICRO.url in message
    assert f"curl -L -o {MICRO.cache_path} {MICRO.url}" in message


def test_a_file_the_server_does_not_have_is_not_offered_a_resume(server, micro):
    del server.files["/official/" + MICRO.path]  # a 404: nothing was received, so nothing can be resumed
    with pytest.raises(WeightsError) as caught:
        weights.fetch_weights(MICRO.name, say=lambda _: None)
    message = str(caught.value)
    assert "answered 404" in message and "no such file at that address" in message
    assert "$TINYMIXER_WEIGHTS_URL" in message and "resume" not in message


def test_a_typo_is_answered_with_the_closest_names():
    with pytest.raises(WeightsError, match=r"did you mean Mixer-B_16") as caught:
        weights.lookup("Mixer-B16")
    assert "python -m tinymixer.transfer.weights list" in str(caught.value)
    assert weights.lookup("mixer-b_16").name == "imagenet1k/Mixer-B_16"  # case does not matter
    with pytest.raises(WeightsError, match="checkpoint no/such/file.npz does not exist"):
        weights.resolve("no/such/file.npz")


def test_the_registry_lists_the_official_files_and_timm_copies(capsys):
    assert weights.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["imagenet1k/Mixer-B_16 (Mixer-B_16)", "imagenet21k/Mixer-L_16", "sam/Mixer-B_32", "gsam/Mixer-S_8",
                 "timm/mixer_b16_224.goog_in21k_ft_in1k", "timm/mixer_b16_224.miil_in21k"]:
        assert name in out
    assert weights.lookup("Mixer-B_16").mib == 228.47 and weights.lookup("imagenet21k/Mixer-L_16").mib == 875.78
    assert weights.lookup("timm/mixer_b16_224.miil_in21k_ft_in1k").top1 == 82.306
    for w in weights.REGISTRY.values():  # every entry's shapes are a real Mixer's: B/16's count is the paper's
        count = sum(int(np.prod(s)) for s in w.param_shapes().values())
        assert count > 1e7
    assert sum(int(np.prod(s)) for s in weights.lookup("Mixer-B_16").param_shapes().values()) == 59_880_472


# ----------------------------------------------------------------------------------------------------------------
# timm's copies: safetensors, read with NumPy


TIMM = Weights("timm/test_micro.unit_pixels", "timm/test_micro.unit_pixels/resolve/main/model.safetensors", "timm",
               "nothing (a test)", "micro/4", 10, 0.5, None, "erf", image_size=32, pixels=(0.0, 1.0))


def test_timm_weights_are_read_converted_and_take_the_usual_pixels(server, monkeypatch, tmp_path):
    monkeypatch.setitem(weights.REGISTRY, TIMM.name, TIMM)
    model = micro_model(seed=5)
    model.gelu = "erf"
    source = write_safetensors(tmp_path / "served.safetensors", convert.to_timm_state_dict(model), {"format": "pt"})
    server.files["/hub/" + TIMM.path] = source.read_bytes()
    loaded = tm.pretrained(TIMM.name)
    assert loaded.gelu == "erf" and not TIMM.download_path.exists()  # converted: the .npz is what stays
    images = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    # trained on pixels in [0, 1]: the loaded model on x in [-1, 1] is the original on (x + 1) / 2
    np.testing.assert_allclose(loaded(images), model((images + 1) / 2), rtol=1e-4, atol=1e-5)


def test_safetensors_round_trip_and_damage(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.linspace(0, 1, 5),
              "c": np.array([1, -2], dtype=np.int64)}
    path = write_safetensors(tmp_path / "x.safetensors", arrays, {"format": "np"})
    read, metadata = read_safetensors(path)
    assert metadata == {"format": "np"}
    for k, v in arrays.items():
        assert read[k].dtype == v.dtype and np.array_equal(read[k], v)
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:-8])
    with pytest.raises(SafetensorsError, match="truncated"):
        read_safetensors(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(SafetensorsError, match="not a safetensors file"):
        read_safetensors(tmp_path / "junk.safetensors")


def test_safetensors_agrees_with_the_reference_implementation(tmp_path):
    if os.environ.get("CI"):
        import safetensors.numpy  # noqa: F401 -- under CI a missing package fails, not skips
    st = pytest.importorskip("safetensors.numpy")
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "v": np.ones(3, dtype=np.float16)}
    st.save_file(arrays, str(tmp_path / "theirs.safetensors"))
    ours, _ = read_safetensors(tmp_path / "theirs.safetensors")
    assert all(np.array_equal(ours[k], v) and ours[k].dtype == v.dtype for k, v in arrays.items())
    write_safetensors(tmp_path / "ours.safetensors", arrays)
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    assert all(np.array_equal(theirs[k], v) for k, v in arrays.items())


# ----------------------------------------------------------------------------------------------------------------
# The programs take a name


def load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script_for_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predict_with_no_checkpoint_fetches_the_default_once_and_classifies(server, monkeypatch, tmp_path, capsys):
    from PIL import Image

    # the default name stands, in this test, for a small 1000-class model served by the loopback server
    default = weights.lookup(weights.DEFAULT)
    small = Weights(default.name, default.path, "official", "a test", "micro/4", 1000, 1.0, image_size=32,
                    aliases=default.aliases)
    monkeypatch.setitem(weights.REGISTRY, default.name, small)
    model = micro_model(num_classes=1000)
    server.files["/official/" + default.path] = npz_bytes(model)
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(image)
    predict = load_script("predict")
    assert predict.main([str(image), "--top", "2"]) == 0
    first = capsys.readouterr().out
    assert "downloading imagenet1k/Mixer-B_16" in first and "ImageNet-1k" in first and "photo.png" in first
    server.stop()
    assert predict.main([str(image), "--top", "2"]) == 0  # the second time from the cache, offline
    second = capsys.readouterr().out
    assert "downloading" not in second
    assert first.splitlines()[-2:] == second.splitlines()[-2:]  # the same classes and probabilities


def test_fewshot_and_finetuning_take_a_name(server, micro, monkeypatch, tmp_path, capsys):
    from helpers import fake_cifar

    from tinymixer.data import save_folder

    folder = save_folder(tmp_path / "data", fake_cifar(num_train=60, num_test=20))
    fewshot = load_script("fewshot")
    assert fewshot.main(["--checkpoint", "Mixer-micro", "--data-dir", str(folder), "--shots", "1", "--seeds", "1",
                         "--no-progress"]) == 0
    assert f"model: {MICRO.cache_path} (" in capsys.readouterr().out  # the name, fetched into the cache
    cifar10 = load_script("cifar10")
    run = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(folder), "--init", "Mixer-micro", "--epochs", "1", "--batch-size", "20",
                         "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "note: --init Mixer-micro: a new zero-initialised head" in out, out
    assert len(server.requests) == 1  # fetched once, for both programs


# ----------------------------------------------------------------------------------------------------------------
# Edge cases a review found


def test_an_empty_record_or_another_valid_file_is_verified_anew(server, micro):
    model, data = micro
    path = weights.fetch_weights(MICRO.name, say=lambda _: None)
    path.with_name(path.name + ".sha256").write_text("")  # a record cut short
    assert weights.fetch_weights(MICRO.name, say=lambda _: None) == path
    other = npz_bytes(micro_model(seed=9))  # a valid file of the same shapes, put there by hand
    path.write_bytes(other)
    said = []
    server.stop()
    assert weights.fetch_weights(MICRO.name, say=said.append).read_bytes() == other  # kept, offline
    assert "another file" in said[0] and len(server.requests) == 1


def test_a_resume_answered_from_byte_zero_starts_the_file_again(server, micro, monkeypatch):
    model, data = micro
    part = MICRO.cache_path.with_name(MICRO.cache_path.name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"old bytes of another file")
    server.ranges_from_zero = True  # the rest was asked for; the whole file comes, from byte 0
    path = weights.fetch_weights(MICRO.name, say=lambda _: None)
    assert server.requests[-1][1] == "bytes=25-" and path.read_bytes() == data


def test_a_malformed_timm_file_is_refused_and_deleted(server, monkeypatch, tmp_path):
    import json
    import struct

    monkeypatch.setitem(weights.REGISTRY, TIMM.name, TIMM)
    header = json.dumps({"x": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}}).encode()
    server.files["/hub/" + TIMM.path] = struct.pack("<Q", len(header)) + header + b"\0" * 16
    with pytest.raises(WeightsError, match="failed verification and was deleted.*malformed"):
        weights.fetch_weights(TIMM.name, say=lambda _: None)
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_safetensors_scalars_and_empty_tensors_round_trip(tmp_path):
    arrays = {"scalar": np.array(3.5), "empty": np.zeros((0, 3), np.float32)}
    read, metadata = read_safetensors(write_safetensors(tmp_path / "s.safetensors", arrays, {"n": 3}))
    assert read["scalar"].shape == () and read["scalar"] == 3.5 and read["empty"].shape == (0, 3)
    assert metadata == {"n": "3"}  # metadata values are strings in the format
    with pytest.raises(SafetensorsError, match="__metadata__"):
        write_safetensors(tmp_path / "t.safetensors", {"__metadata__": np.zeros(2)})


def test_a_bad_url_and_a_bad_header_are_refused_with_a_clear_message(tmp_path):
    from tinymixer.util.download import DownloadError, fetch

    with pytest.raises(DownloadError, match="cannot fetch mirror/file.npz"):
        fetch("mirror/file.npz", tmp_path / "f.part", "f", progress=False)  # a path where a URL belongs
    import json
    import struct

    header = json.dumps({"__metadata__": ["not", "a", "mapping"]}).encode()
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(SafetensorsError, match="__metadata__ is not a JSON object"):
        read_safetensors(tmp_path / "m.safetensors")
