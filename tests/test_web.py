"""The face explorer (web/) in headless Chromium, driven by Selenium.

The page is served by web/serve.py from a temporary root that links web/ and pretrained/ and
holds small model folders under runs/ made here (a synthetic latent density, damaged files). The
faces it decodes with onnxruntime-web are compared with Python onnxruntime's decode of the same z.
Photos (tests/photos/, public domain, none from CelebA) are given to the page as files and, in a
browser with a fake camera, as its picture; the face the page aligns and encodes is compared with
align.py's and the Python encoder's. Photos without a face, files that are not images, an
8000x6000 photo and two faces side by side are made here.
What serve.py serves and refuses (other files, listings, dotfiles, symbolic links out of the
served folders, other Host names, malformed paths) is tested without a browser, on a fake repository.

Needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver),
selenium, and onnxruntime-web in web/node_modules (`npm ci` in web/). Without them the tests
are skipped with the reason, unless REQUIRE_BROWSER=1 (as .ci/run sets): then they fail.
test_screenshot and test_photo_screenshot take pictures of the page; with UPDATE_SCREENSHOT=1
they write them to docs/images/web_explorer.png and web_explorer_photo.png, the READMEs' pictures
(a plain test run changes no tracked file).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import inference

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
PRETRAINED = REPO / "pretrained" / "celeba64"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ORT_DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
SCREENSHOT = REPO / "docs" / "images" / "web_explorer.png"
PHOTO_SCREENSHOT = REPO / "docs" / "images" / "web_explorer_photo.png"
PHOTOS = REPO / "tests" / "photos"
SCREENSHOT_SEED = 105  # a clear face at T = 0.7
LOAD_TIMEOUT = 60  # seconds; a cold load takes 1-2 s on a 2-core CPU
LEVEL = 1 / 255


def browser_problem() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        return f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "needs selenium (pip install -r requirements.txt)"
    if not (ORT_DIST / "ort.wasm.min.mjs").is_file():
        return "needs onnxruntime-web in web/node_modules (run `npm ci` in web/)"
    return None


def load_serve():
    """web/serve.py as a module (web/ is no package)."""
    spec = importlib.util.spec_from_file_location("serve", WEB / "serve.py")
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    return serve


@contextlib.contextmanager
def running(server):
    """Serve in a thread until the block ends."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A temporary server root: web/ and pretrained/ linked, plus model folders under runs/."""
    root = tmp_path_factory.mktemp("site")
    (root / "web").symlink_to(WEB, target_is_directory=True)
    (root / "pretrained").symlink_to(REPO / "pretrained", target_is_directory=True)
    models = root / "runs"
    latent_dim = int(inference.read_onnx_metadata(PRETRAINED / "decoder.onnx")["latent_dim"])

    def folder(name: str, files: dict[str, str | bytes | Path]) -> Path:
        path = models / name
        path.mkdir(parents=True)
        for file, content in files.items():
            if isinstance(content, Path):
                shutil.copyfile(content, path / file)  # not a link: serve.py follows none out of runs/
            elif isinstance(content, bytes):
                (path / file).write_bytes(content)
            else:
                (path / file).write_text(content)
        return path

    decoder = PRETRAINED / "decoder.onnx"
    directions = PRETRAINED / "attribute_directions.json"
    density = synthetic_density(latent_dim)
    folder(
        "density",
        {"decoder.onnx": decoder, "attribute_directions.json": directions, "latent_density.json": json.dumps(density)},
    )
    folder("garbage-decoder", {"decoder.onnx": b"this is not an ONNX file"})
    folder("encoder-as-decoder", {"decoder.onnx": PRETRAINED / "encoder.onnx"})
    folder("bad-directions", {"decoder.onnx": decoder, "attribute_directions.json": '{"format": "celeba-vae-attr'})
    stale = {**json.loads(directions.read_text()), "format": "celeba-vae-attributes/1"}  # before Male was held fixed
    folder("stale-directions", {"decoder.onnx": decoder, "attribute_directions.json": json.dumps(stale)})
    folder(
        "wrong-size-density",
        {"decoder.onnx": decoder, "latent_density.json": json.dumps({**density, "latent_dim": 64})},
    )
    upper = {**density, "cholesky": [np.asarray(factor).T.tolist() for factor in density["cholesky"]]}
    folder("upper-density", {"decoder.onnx": decoder, "latent_density.json": json.dumps(upper)})
    return root


def synthetic_density(latent_dim: int) -> dict:
    """A two-component latent_density.json fitted to random numbers (clusters at -1 and +1)."""
    rng = np.random.default_rng(0)
    weights, means, factors = [0.4, 0.6], [], []
    for centre in (-1.0, 1.0):
        points = centre + 0.5 * rng.standard_normal((4 * latent_dim, latent_dim))
        means.append(points.mean(axis=0).tolist())
        factors.append(np.linalg.cholesky(np.cov(points, rowvar=False)).tolist())
    return {
        "format": "celeba-vae-latent-density/1",
        "latent_dim": latent_dim,
        "components": 2,
        "sampling": "c ~ weights, eps ~ N(0, I), z = means[c] + T * cholesky[c] @ eps (T: temperature)",
        "fitted_on": "random numbers (a test fixture)",
        "weights": weights,
        "means": means,
        "cholesky": factors,
    }


@pytest.fixture(scope="module")
def base_url(site):
    problem = browser_problem()
    if problem:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but the browser tests cannot run: {problem}")
        pytest.skip(problem)
    with running(load_serve().make_server(site, port=0, quiet=True)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/"


def start_chromium(*arguments: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        *arguments,
    ):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    browser.set_script_timeout(LOAD_TIMEOUT)
    return browser


@pytest.fixture(scope="module")
def driver(base_url):
    browser = start_chromium()
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def python_decoder():
    return inference.make_session(PRETRAINED / "decoder.onnx")


def open_page(driver, base_url: str, query: str = "") -> str:
    """Load the page and wait until it shows its first face or an error; returns the status."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base_url}web/{query}")
    script = "return window.explorer && (explorer.status === 'error' || explorer.decodes > 0) ? explorer.status : null"
    return WebDriverWait(driver, LOAD_TIMEOUT, poll_frequency=0.05).until(lambda d: d.execute_script(script))


def idle(driver) -> dict:
    """Wait until the page has drawn the latest z; returns explorer.info()."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1]; explorer.whenIdle().then(() => done(explorer.info()));"
    )


def page_face(driver, spec: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, decoder output [H, W, C], drawn 8-bit RGB [H, W, 3]) of the face on the page."""
    z = np.asarray(driver.execute_script("return explorer.z()"), dtype=np.float32)
    size, channels = spec["imageSize"], spec["channels"]
    output = np.asarray(driver.execute_script("return explorer.output()"), dtype=np.float32)
    rgba = np.asarray(driver.execute_script("return explorer.rgba()"), dtype=np.uint8)
    return z, output.reshape(size, size, channels), rgba.reshape(size, size, 4)[..., :3]


def eight_bit(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)


def expected_latent(density: dict | None, component: int, eps, temperature: float) -> np.ndarray:
    """z = means[c] + T * cholesky[c] @ eps, or T * eps for the prior."""
    eps = np.asarray(eps, dtype=np.float64)
    if density is None:
        return temperature * eps
    return np.asarray(density["means"][component]) + temperature * np.asarray(density["cholesky"][component]) @ eps


def reference_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    omega = np.arccos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1))
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def set_range(driver, selector: str, value: float) -> None:
    """Set a range input as dragging it would (value, then an input event)."""
    driver.execute_script(
        "const input = document.querySelector(arguments[0]); input.value = String(arguments[1]);"
        "input.dispatchEvent(new Event('input', {bubbles: true}));",
        selector,
        value,
    )


def pretrained_density() -> dict | None:
    path = PRETRAINED / "latent_density.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --------------------------------------------------------------------------- the pretrained model
@pytest.fixture(scope="module")
def pretrained_page(driver, base_url):
    assert open_page(driver, base_url, "?seed=7") == "ready", driver.execute_script("return explorer.error")
    return driver


def test_first_face_appears_and_matches_python(pretrained_page, python_decoder):
    driver = pretrained_page
    info = idle(driver)
    assert info["spec"] == {"latentDim": 128, "imageSize": 64, "channels": 3, "valueRange": [0, 1], "layout": "NHWC"}
    assert info["metadata"] == inference.read_onnx_metadata(python_decoder)  # the page's protobuf reader
    density = pretrained_density()
    assert info["sampler"] == ("density" if density else "prior")
    assert info["seed"] == 7 and driver.find_element("id", "seed").text == "7"
    sampler_text = driver.find_element("id", "sampler").text
    assert ("fitted latent density" if density else "standard normal prior") in sampler_text

    z, output, drawn = page_face(driver, info["spec"])
    expected_z = expected_latent(density, info["component"], info["eps"], info["temperature"])
    np.testing.assert_allclose(z, expected_z, rtol=1e-6, atol=1e-6)
    python = inference.decode(python_decoder, z)[0]
    assert np.abs(output - python).max() <= LEVEL  # in fact about 1e-6: the same graph, another runtime
    assert np.abs(drawn.astype(int) - eight_bit(python).astype(int)).max() <= 1
    assert drawn.std() > 10  # a face, not a flat canvas

    face = driver.find_element("id", "face")
    assert face.is_displayed() and face.size["width"] >= 256  # shown large
    assert "ms after page load" in driver.find_element("id", "first-face").text
    assert 0 < info["timings"]["firstFaceMs"] < LOAD_TIMEOUT * 1000
    assert info["timings"]["firstDecodeMs"] > 0


def test_seed_input_and_new_face(pretrained_page):
    from selenium.webdriver.common.keys import Keys

    driver = pretrained_page
    seven = driver.execute_script("return explorer.z()")
    driver.find_element("id", "new-face").click()
    info = idle(driver)
    assert info["seed"] != 7 and driver.find_element("id", "seed").text == str(info["seed"])
    assert driver.execute_script("return explorer.z()") != seven
    field = driver.find_element("id", "seed-input")
    field.send_keys("7", Keys.ENTER)
    info = idle(driver)
    assert info["seed"] == 7
    assert driver.execute_script("return explorer.z()") == seven  # a seed gives the same face again
    assert "seed=7" in driver.current_url  # and the address can be shared


def test_smiling_slider_moves_the_face_as_python_does(pretrained_page, python_decoder):
    from selenium.webdriver.common.keys import Keys

    driver = pretrained_page
    info = idle(driver)
    z0, before, _ = page_face(driver, info["spec"])
    assert info["alphas"]["Smiling"] == 0
    slider = driver.find_element("css selector", 'input[data-attribute="Smiling"]')
    for _ in range(20):  # 20 steps of 0.1, as a person moving the slider with the keyboard
        slider.send_keys(Keys.ARROW_RIGHT)
    info = idle(driver)
    assert info["alphas"]["Smiling"] == pytest.approx(2.0)

    directions = json.loads((PRETRAINED / "attribute_directions.json").read_text())["attributes"]
    smiling = np.asarray(directions["Smiling"]["direction"], dtype=np.float64)
    z, after, drawn = page_face(driver, info["spec"])
    np.testing.assert_allclose(z, z0 + 2.0 * smiling, rtol=1e-5, atol=1e-5)  # generate.py's attribute_sweep
    python_before, python_after = inference.decode(python_decoder, np.stack([z0, z]))
    assert np.abs(after - python_after).max() <= LEVEL
    assert np.abs(drawn.astype(int) - eight_bit(python_after).astype(int)).max() <= 1
    change, python_change = (after - before).ravel(), (python_after - python_before).ravel()
    assert np.abs(change).mean() > 0.01  # the face really changed
    assert np.corrcoef(change, python_change)[0, 1] > 0.999  # and in the direction Python's decode gives

    driver.find_element("id", "reset-attributes").click()
    info = idle(driver)
    assert info["alphas"]["Smiling"] == 0
    np.testing.assert_allclose(page_face(driver, info["spec"])[0], z0, atol=1e-6)


def test_temperature_slider(pretrained_page):
    driver = pretrained_page
    set_range(driver, "#temperature", 0.5)
    info = idle(driver)
    assert info["temperature"] == 0.5
    z = np.asarray(driver.execute_script("return explorer.z()"))
    expected = expected_latent(pretrained_density(), info["component"], info["eps"], 0.5)
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-6)
    assert driver.find_element("id", "temperature-value").text == "0.50"


def test_interpolation_scrubs_and_plays_the_slerp_path(pretrained_page):
    driver = pretrained_page
    driver.find_element("id", "pick-a").click()
    driver.find_element("id", "new-face").click()
    idle(driver)
    driver.find_element("id", "pick-b").click()
    info = idle(driver)
    a, b = np.asarray(info["pathA"]), np.asarray(info["pathB"])
    assert not np.allclose(a, b)

    set_range(driver, "#path-t", 0.5)
    info = idle(driver)
    assert info["source"] == "path" and info["t"] == 0.5
    z = np.asarray(driver.execute_script("return explorer.z()"))
    np.testing.assert_allclose(z, reference_slerp(a, b, 0.5), rtol=1e-5, atol=1e-5)

    from selenium.webdriver.support.ui import WebDriverWait

    decodes = driver.execute_script("return explorer.decodes")
    driver.find_element("id", "play").click()
    WebDriverWait(driver, 10, poll_frequency=0.1).until(
        lambda d: not d.execute_script("return explorer.info().playing")
    )
    info = idle(driver)
    assert info["t"] == 1
    assert driver.execute_script("return explorer.decodes") - decodes > 5  # animated, not one jump
    np.testing.assert_allclose(driver.execute_script("return explorer.z()"), b, rtol=1e-5, atol=1e-5)


def test_screenshot(pretrained_page, tmp_path):
    """The page with a generated face (seed SCREENSHOT_SEED, smiling); UPDATE_SCREENSHOT=1 makes it
    the README's docs/images/web_explorer.png."""
    driver = pretrained_page
    screenshot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / SCREENSHOT.name
    field = driver.find_element("id", "seed-input")
    field.clear()
    field.send_keys(str(SCREENSHOT_SEED))
    driver.find_element("id", "seed-go").click()
    set_range(driver, "#temperature", 0.7)
    set_range(driver, 'input[data-attribute="Smiling"]', 1.0)
    info = idle(driver)
    assert info["seed"] == SCREENSHOT_SEED and info["source"] == "sample"
    page, frame = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]"
    )
    driver.set_window_size(1280, page + frame)  # the whole page, no scroll bar
    try:
        assert driver.save_screenshot(str(screenshot))
    finally:
        driver.set_window_size(1280, 1000)
    with Image.open(screenshot) as shot:
        assert shot.width >= 1000
        face = driver.find_element("id", "face").rect
        crop = np.asarray(shot.convert("RGB").crop((face["x"], face["y"], face["x"] + 64, face["y"] + 64)))
    assert crop.std() > 1  # the face, not an empty frame


def test_face_is_shown_at_256_px_smooth_or_pixelated_and_the_choice_is_remembered(driver, base_url):
    from selenium.webdriver.support.ui import WebDriverWait

    rendering = "return getComputedStyle(document.getElementById('face')).imageRendering"
    # a same-origin absolute URL is a model folder too
    assert open_page(driver, base_url, f"?model={base_url}pretrained/celeba64&seed=3") == "ready"
    face = driver.find_element("id", "face")
    assert face.size == {"width": 256, "height": 256}  # 4 x 64: every model pixel 4 x 4 screen pixels
    assert (face.get_attribute("width"), face.get_attribute("height")) == ("64", "64")  # the model's pixels
    assert driver.execute_script(rendering) == "auto"
    try:
        driver.find_element("css selector", 'input[name="scaling"][value="pixelated"]').click()
        assert driver.execute_script(rendering) == "pixelated"
        driver.refresh()
        WebDriverWait(driver, LOAD_TIMEOUT, poll_frequency=0.05).until(
            lambda d: d.execute_script("return window.explorer && explorer.decodes > 0")
        )
        assert driver.execute_script(rendering) == "pixelated"
        assert driver.find_element("css selector", 'input[name="scaling"][value="pixelated"]').is_selected()
        driver.find_element("css selector", 'input[name="scaling"][value="smooth"]').click()
        assert driver.execute_script(rendering) == "auto"
    finally:
        driver.execute_script("localStorage.clear()")


# --------------------------------------------------------------------------- other model folders
@pytest.mark.parametrize("model", ["https://example.com/runs/x", "//example.com/runs/x", "data:text/plain,x"])
def test_a_model_of_another_origin_is_refused_in_the_page(driver, base_url, model):
    assert open_page(driver, base_url, f"?model={model}") == "error"
    error = driver.find_element("id", "error")
    assert error.is_displayed() and f"?model={model} is not a folder of this server" in error.text
    assert driver.execute_script("return explorer.info().timings.modelFetchMs") is None  # nothing fetched


def test_missing_model_shows_an_error_in_the_page(driver, base_url):
    assert open_page(driver, base_url, "?model=runs/nowhere") == "error"
    error = driver.find_element("id", "error")
    assert error.is_displayed()
    assert "decoder.onnx is missing" in error.text and "404" in error.text and "?model=" in error.text
    assert "failed" in driver.find_element("id", "face").get_attribute("class")
    assert not driver.find_element("id", "new-face").is_enabled()


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("garbage-decoder", "decoder.onnx is not an ONNX model"),
        ("encoder-as-decoder", "decoder.onnx is the encoder, not the decoder"),
        ("bad-directions", "attribute_directions.json is not valid JSON"),
        (
            "stale-directions",
            'is not a celeba-vae-attributes/2 file (format "celeba-vae-attributes/1"). Compute it again',
        ),
        ("wrong-size-density", "latent_density.json is for latent size 64, but this decoder takes 128"),
        ("upper-density", "latent_density.json cholesky[0] is not lower triangular"),
    ],
)
def test_malformed_files_show_an_error_in_the_page(driver, base_url, folder, message):
    assert open_page(driver, base_url, f"?model=runs/{folder}") == "error"
    error = driver.find_element("id", "error")
    assert error.is_displayed() and message in error.text


def test_fitted_density_is_sampled(driver, base_url, site, python_decoder):
    density = json.loads((site / "runs" / "density" / "latent_density.json").read_text())
    assert open_page(driver, base_url, "?model=runs/density&seed=11") == "ready"
    info = idle(driver)
    assert info["sampler"] == "density" and info["components"] == 2 and info["temperature"] == 1
    assert "fitted latent density" in driver.find_element("id", "sampler").text
    z, output, _ = page_face(driver, info["spec"])
    np.testing.assert_allclose(z, expected_latent(density, info["component"], info["eps"], 1.0), rtol=1e-5, atol=1e-5)
    assert np.abs(output - inference.decode(python_decoder, z)[0]).max() <= LEVEL

    set_range(driver, "#temperature", 0.25)
    info = idle(driver)
    z = np.asarray(driver.execute_script("return explorer.z()"))
    np.testing.assert_allclose(z, expected_latent(density, info["component"], info["eps"], 0.25), rtol=1e-5, atol=1e-5)

    components = set()
    for _ in range(12):  # both components are drawn
        driver.find_element("id", "new-face").click()
        components.add(idle(driver)["component"])
    assert components == {0, 1}


def test_file_picker_opens_a_model(driver, base_url, site):
    assert open_page(driver, base_url, "?model=runs/nowhere") == "error"  # a page that failed can recover
    folder = site / "runs" / "density"
    names = ("decoder.onnx", "attribute_directions.json", "latent_density.json")
    files = [(folder / name).resolve() for name in names] + [PRETRAINED / "encoder.onnx"]
    driver.find_element("id", "files").send_keys("\n".join(str(file) for file in files))
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, LOAD_TIMEOUT, poll_frequency=0.05).until(
        lambda d: d.execute_script("return explorer.status === 'ready' && explorer.decodes > 0")
    )
    info = idle(driver)
    assert info["model"].startswith("your files") and info["sampler"] == "density"
    assert not driver.find_element("id", "error").is_displayed()
    assert len(driver.find_elements("css selector", "#attributes input")) == 6
    assert info["model"] == "your files: decoder.onnx, encoder.onnx, directions, density"
    WebDriverWait(driver, LOAD_TIMEOUT).until(lambda d: d.execute_script("return explorer.photoReady"))
    photo = choose_photo(driver, PHOTOS / "collins.jpg")  # the encoder chosen with the files edits photos
    assert not photo["problem"] and len(photo["faces"]) == 1


# --------------------------------------------------------------------------- your photo
# align.py's aligned crop and the page's run the same arithmetic (web/align.js ports Pillow's
# resampling; Chromium decodes the test photos to Pillow's pixels). What differs is the face
# models' float sums (onnxruntime-web's WebAssembly kernels against native onnxruntime): the
# landmarks are 1e-4 pixels apart, and about 0.01 in the second look at the aligned frame, which
# sees a frame a level apart on a few pixels. Moving those landmarks by 0.005 pixels moves
# align.py's own 64x64 input by 0.03 to 0.1 levels on average (measured on obama.jpg, collins.jpg
# and an EXIF-rotated hopper.jpg); the page's is at most 2 levels (PHOTO_LEVELS) from Python's, and
# 0.13 on average on that rotated photo (PHOTO_MEAN_LEVELS allows 0.2).
PHOTO_LEVELS = 2
PHOTO_MEAN_LEVELS = 0.2


@pytest.fixture(scope="module")
def finder():
    import align

    return align.FaceFinder()


@pytest.fixture(scope="module")
def python_encoder():
    return inference.make_session(PRETRAINED / "encoder.onnx")


def python_faces(finder, path: Path) -> list[np.ndarray]:
    """align.py's model inputs [64, 64, 3] of the faces of a photo, largest first."""
    import align
    import images

    pixels = images.read_pixels(path)
    faces = align.choose_faces(finder.find(pixels), "all")
    return [images.face_from_pixels(align.align_face(pixels, face, finder), 64) for face in faces]


def photo_page(driver, base_url: str) -> None:
    """The pretrained model's page, its face models and encoder loaded."""
    from selenium.webdriver.support.ui import WebDriverWait

    if not driver.current_url.endswith("/web/?seed=7") or not driver.execute_script(
        "return window.explorer && explorer.photoReady"
    ):
        assert open_page(driver, base_url, "?seed=7") == "ready"
    WebDriverWait(driver, LOAD_TIMEOUT, poll_frequency=0.05).until(
        lambda d: d.execute_script("return explorer.photoReady || explorer.photo().problem")
    )
    assert driver.execute_script("return explorer.photoReady"), driver.execute_script("return explorer.photo()")


def choose_photo(driver, path: Path, element: str = "photo") -> dict:
    """Give a file to the photo input; returns explorer.photo() once the page has dealt with it."""
    from selenium.webdriver.support.ui import WebDriverWait

    done = driver.execute_script("return explorer.photosDone")
    driver.find_element("id", element).send_keys(str(path.resolve()))
    WebDriverWait(driver, LOAD_TIMEOUT, poll_frequency=0.05).until(
        lambda d: d.execute_script("return explorer.photosDone") > done
    )
    idle(driver)
    return driver.execute_script("return explorer.photo()")


def page_input(photo: dict) -> np.ndarray:
    return np.asarray(photo["input"], dtype=np.float32).reshape(64, 64, 3)


def assert_same_face(page: np.ndarray, python: np.ndarray, levels: float = PHOTO_LEVELS) -> None:
    difference = np.abs(page - python) * 255
    assert difference.max() <= levels + 1e-3, f"{difference.max():.2f} levels apart"
    assert difference.mean() < PHOTO_MEAN_LEVELS, f"{difference.mean():.3f} levels apart on average"


def test_the_page_aligns_a_photo_as_align_py_does(driver, base_url, finder, python_encoder, python_decoder):
    import align

    photo_page(driver, base_url)
    assert driver.execute_script("return explorer.template") == align.TEMPLATE.tolist()
    photo = choose_photo(driver, PHOTOS / "obama.jpg")
    assert not photo["problem"], photo["message"]
    assert photo["name"] == "obama.jpg" and photo["size"] == photo["original"] == [576, 720]
    assert len(photo["faces"]) == 1 and photo["index"] == 0
    [expected] = python_faces(finder, PHOTOS / "obama.jpg")
    assert_same_face(page_input(photo), expected)

    # its z is the Python encoder's mu of that input, as close as the inputs are
    mu = np.asarray(photo["mu"], dtype=np.float32)
    python_mu = python_encoder.run(None, {"image": expected[None]})[0][0]
    assert np.abs(mu - python_mu).max() < 0.05 and np.corrcoef(mu, python_mu)[0, 1] > 0.999
    info = idle(driver)
    assert info["source"] == "photo"
    z, output, drawn = page_face(driver, info["spec"])
    np.testing.assert_allclose(z, mu, atol=1e-6)
    assert np.abs(output - inference.decode(python_decoder, z)[0]).max() <= LEVEL
    crop = driver.execute_script(
        "const c = document.getElementById('photo-crop'); return Array.from(c.getContext('2d').getImageData(0, 0, 64, 64).data)"
    )
    shown = np.asarray(crop, np.uint8).reshape(64, 64, 4)[..., :3]
    assert np.array_equal(shown, eight_bit(page_input(photo)))  # the aligned crop is shown beside the face
    assert driver.find_element("id", "photo-crop").is_displayed()
    assert "ms from choosing the photo" in driver.find_element("id", "photo-time").text


@pytest.mark.parametrize("name", sorted(path.name for path in PHOTOS.glob("*.jpg")))
def test_every_test_photo_is_aligned_as_align_py_aligns_it(driver, base_url, finder, name):
    """The landmarks of every face within 1e-3 pixels of align.py's (1e-4 on these photos), and the
    model input within a few levels: what differs is the face models' float sums (above), within a level
    everywhere and 0.06 on average on these photos; the bounds leave room for photos whose JPEG
    Chromium decodes a level or a few apart from Pillow on some pixels (these it decodes alike)."""
    import align
    import images

    photo_page(driver, base_url)
    photo = choose_photo(driver, PHOTOS / name)
    python = python_faces(finder, PHOTOS / name)
    assert not photo["problem"] and len(photo["faces"]) == len(python)
    found = align.choose_faces(finder.find(images.read_pixels(PHOTOS / name)), "all")
    landmarks = np.abs(np.asarray([face["points"] for face in photo["faces"]]) - [face.points for face in found])
    print(f"{name}: landmarks at most {landmarks.max():.1e} pixels apart")
    assert landmarks.max() < 1e-3
    difference = np.abs(page_input(photo) - python[0]) * 255
    print(f"{name}: at most {difference.max():.0f} levels apart, {difference.mean():.3f} on average")
    assert difference.max() <= 8 and difference.mean() < 0.5


DETECTOR_INPUTS_SCRIPT = """
const [encoded, width, height, done] = arguments;
import('./align.js').then(async (align) => {
  const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
  const data = new Uint8ClampedArray(width * height * 4).fill(255);
  for (let i = 0; i < width * height; i++) data.set(bytes.subarray(3 * i, 3 * i + 3), 4 * i);
  const inputs = [];
  const detector = {  // records what the detector is given and finds nothing
    inputNames: ['input'],
    outputNames: ['regressors', 'classificators'],
    run: async (feeds) => {
      inputs.push(feeds.input.data);
      return { regressors: { data: new Float32Array(896 * 16) }, classificators: { data: new Float32Array(896).fill(-9) } };
    },
  };
  const ort = { Tensor: class { constructor(type, data) { this.data = data; } } };
  await new align.FaceFinder(ort, detector, null).detect({ width, height, data });
  const all = new Uint8Array(inputs.length * inputs[0].length * 4);
  inputs.forEach((input, i) => all.set(new Uint8Array(input.buffer), i * input.length * 4));
  let binary = '';
  for (let i = 0; i < all.length; i += 8192) binary += String.fromCharCode(...all.subarray(i, i + 8192));
  done(btoa(binary));
});
"""


@pytest.mark.parametrize("shape", [(720, 317), (100, 37), (218, 178), (300, 129)])
def test_the_detector_is_given_what_align_py_gives_it(driver, base_url, finder, shape):
    """Every square the detector looks at (align.detector_views: area-shrunk with Pillow's BOX
    filter, in Pillow's order of passes, then its EXTENT transform's bilinear sampling, black beyond
    the photo), equal to align.py's float32 input bit for bit, on random pixels (where every
    rounding shows) of sizes whose views reach past the edges and shrink vertically first."""
    import base64
    import copy

    import align

    class Recorder:  # the detector's session, recording its inputs
        def __init__(self, session):
            self.session, self.inputs = session, []

        def get_inputs(self):
            return self.session.get_inputs()

        def run(self, names, feeds):
            self.inputs.append(next(iter(feeds.values())))
            return self.session.run(names, feeds)

    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    recording = copy.copy(finder)
    recording.detector = Recorder(finder.detector)
    recording.detect(pixels)
    expected = np.concatenate(recording.detector.inputs)
    assert len(expected) == len(align.detector_views(*shape))
    photo_page(driver, base_url)
    encoded = base64.b64encode(pixels.tobytes()).decode()
    page = driver.execute_async_script(DETECTOR_INPUTS_SCRIPT, encoded, shape[1], shape[0])
    page = np.frombuffer(base64.b64decode(page), np.float32).reshape(expected.shape)
    mismatched = np.argwhere(page != expected)
    assert not len(mismatched), f"{len(mismatched)} values differ, the first at {mismatched[0].tolist()}"


WARP_SCRIPT = """
const [encoded, width, height, matrix, size, done] = arguments;
import('./align.js').then((align) => {
  const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
  const data = new Uint8ClampedArray(width * height * 4).fill(255);
  for (let i = 0; i < width * height; i++) data.set(bytes.subarray(3 * i, 3 * i + 3), 4 * i);
  const out = align.warp({ width, height, data }, matrix, size[0], size[1]).data;
  let binary = '';
  for (let i = 0; i < out.length; i += 4) binary += String.fromCharCode(out[i], out[i + 1], out[i + 2]);
  done(btoa(binary));
});
"""


@pytest.mark.parametrize(
    "scale, angle, shift, size",
    [
        (0.3, 20, (-30, 40), (178, 218)),  # shrunk, turned, reaching past the photo's edges
        (0.5, 0, (10, -20), (40, 200)),  # a tall region: Pillow shrinks it vertically first
        (0.97, 5, (-2, -3), (10, 10)),  # too little to shrink: the region as it is
        (2.5, -15, (-100, -60), (192, 192)),  # enlarged
    ],
)
def test_the_warp_is_align_py_s_pixel_for_pixel(driver, base_url, scale, angle, shift, size):
    """align.warp's region (the photo's edge repeated beyond it), area shrink and bicubic transform,
    equal to align.py's on random pixels, where every rounding shows."""
    import base64

    import align

    pixels = np.random.default_rng(size[0]).integers(0, 256, (300, 257, 3), dtype=np.uint8)
    cos, sin = scale * np.cos(np.radians(angle)), scale * np.sin(np.radians(angle))
    matrix = np.array([[cos, -sin, shift[0]], [sin, cos, shift[1]]])
    expected = align.warp(pixels, matrix, size)
    photo_page(driver, base_url)
    encoded = base64.b64encode(pixels.tobytes()).decode()
    page = driver.execute_async_script(WARP_SCRIPT, encoded, 257, 300, matrix.reshape(6).tolist(), list(size))
    page = np.frombuffer(base64.b64decode(page), np.uint8).reshape(expected.shape)
    mismatched = np.argwhere(page != expected)
    assert not len(mismatched), f"{len(mismatched)} values differ, the first at {mismatched[0].tolist()}"


def test_the_sliders_edit_the_photo_and_it_interpolates_with_a_generated_face(driver, base_url):
    photo_page(driver, base_url)
    mu = np.asarray(choose_photo(driver, PHOTOS / "hopper.jpg")["mu"])
    set_range(driver, 'input[data-attribute="Smiling"]', 1.5)
    info = idle(driver)
    directions = json.loads((PRETRAINED / "attribute_directions.json").read_text())["attributes"]
    smiling = np.asarray(directions["Smiling"]["direction"])
    z = np.asarray(driver.execute_script("return explorer.z()"))
    np.testing.assert_allclose(z, mu + 1.5 * smiling, rtol=1e-5, atol=1e-5)
    assert info["source"] == "photo"
    set_range(driver, 'input[data-attribute="Smiling"]', 0)
    driver.find_element("id", "pick-a").click()
    driver.find_element("id", "new-face").click()
    idle(driver)
    driver.find_element("id", "pick-b").click()
    set_range(driver, "#path-t", 0.0)
    info = idle(driver)
    np.testing.assert_allclose(info["pathA"], mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(driver.execute_script("return explorer.z()"), mu, rtol=1e-5, atol=1e-5)
    set_range(driver, "#path-t", 0.5)
    z = np.asarray(driver.execute_script("return explorer.z()"))
    np.testing.assert_allclose(z, reference_slerp(mu, info["pathB"], 0.5), rtol=1e-5, atol=1e-5)


def test_a_second_photo_is_face_b_and_the_result_downloads(driver, base_url, tmp_path):
    photo_page(driver, base_url)
    a = np.asarray(choose_photo(driver, PHOTOS / "obama.jpg")["mu"])
    driver.find_element("id", "pick-a").click()
    b = np.asarray(choose_photo(driver, PHOTOS / "collins.jpg")["mu"])
    driver.find_element("id", "pick-b").click()
    set_range(driver, "#path-t", 0.25)
    idle(driver)
    z = np.asarray(driver.execute_script("return explorer.z()"))
    np.testing.assert_allclose(z, reference_slerp(a, b, 0.25), rtol=1e-5, atol=1e-5)

    choose_photo(driver, PHOTOS / "collins.jpg")
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    driver.find_element("id", "download").click()
    saved = tmp_path / "face-photo-collins.png"
    deadline = time.monotonic() + 10
    while not saved.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    with Image.open(saved) as image:
        downloaded = np.asarray(image.convert("RGB"))
    rgba = np.asarray(driver.execute_script("return explorer.rgba()"), np.uint8).reshape(64, 64, 4)
    assert np.array_equal(downloaded, rgba[..., :3])


def test_two_faces_the_largest_first_and_another_on_request(driver, base_url, tmp_path, finder):
    photo_page(driver, base_url)
    with Image.open(PHOTOS / "obama.jpg") as left, Image.open(PHOTOS / "biden.jpg") as right:
        both = Image.new("RGB", (left.width + right.width, left.height))  # Biden's face is the smaller
        both.paste(left, (0, 0))
        both.paste(right, (left.width, 0))
    path = tmp_path / "two.jpg"
    both.save(path, quality=92)
    photo = choose_photo(driver, path)
    assert len(photo["faces"]) == 2 and photo["index"] == 0
    sizes = [face["size"] for face in photo["faces"]]
    assert sizes[0] > sizes[1] and photo["faces"][1]["box"][0] > 576  # the smaller face is Biden's, right
    python = python_faces(finder, path)
    assert_same_face(page_input(photo), python[0])
    assert driver.find_element("id", "photo-face-label").is_displayed()

    from selenium.webdriver.support.ui import Select

    done = driver.execute_script("return explorer.photosDone")
    Select(driver.find_element("id", "photo-face")).select_by_value("1")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, LOAD_TIMEOUT).until(lambda d: d.execute_script("return explorer.photosDone") > done)
    photo = driver.execute_script("return explorer.photo()")
    assert photo["index"] == 1
    assert_same_face(page_input(photo), python[1])
    np.testing.assert_allclose(driver.execute_script("return explorer.z()"), photo["mu"], rtol=1e-5, atol=1e-5)


def big_endian_exif(orientation: int) -> bytes:
    """A JPEG APP1 segment whose EXIF (in Motorola byte order, as many phones write it, where
    Pillow writes Intel's) holds only the orientation."""
    tiff = b"MM\x00\x2a" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big")
    tiff += (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big") + (1).to_bytes(4, "big")
    tiff += orientation.to_bytes(2, "big") + bytes(2) + bytes(4)  # the value, padded; no next IFD
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body


@pytest.mark.parametrize("scale, byte_order", [(1, "little"), (5, "little"), (1, "big")])
def test_an_exif_rotated_photo_is_read_upright(driver, base_url, tmp_path, finder, scale, byte_order):
    """At 5 times the size the browser also shrinks the photo as it decodes it (upright sizes)."""
    photo_page(driver, base_url)
    path = tmp_path / "rotated.jpg"
    with Image.open(PHOTOS / "hopper.jpg") as image:
        exif = Image.Exif()
        exif[0x0112] = 6  # the camera was turned: the viewer turns the picture 90 degrees clockwise
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC)
        image.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    if byte_order == "big":
        with Image.open(path) as image:
            image.save(path, quality=100)  # no EXIF now; then a big-endian one after the SOI marker
        jpeg = path.read_bytes()
        path.write_bytes(jpeg[:2] + big_endian_exif(6) + jpeg[2:])
    photo = choose_photo(driver, path)
    assert not photo["problem"] and photo["original"] == [512 * scale, 600 * scale]
    if scale == 1:
        assert_same_face(page_input(photo), python_faces(finder, path)[0])
    else:
        assert photo["size"] == [1748, 2048]
        # read at a third of its size, near align.py's crop of the full photo: align.py's own crop
        # of this photo shrunk to 1748x2048 by Pillow's BILINEAR, BOX, BICUBIC or LANCZOS filter is
        # 1.5 to 7.2 levels from it on average (its second look, Face Mesh in the aligned frame,
        # moves by tenths of a pixel with the photo's resampling); the page's (the browser's resizes),
        # 6.0
        difference = np.abs(page_input(photo) - python_faces(finder, path)[0]) * 255
        print(f"rotated at 5 times the size: {difference.mean():.2f} levels apart on average")
        assert difference.mean() < 8


def test_a_large_photo_is_read_shrunk(driver, base_url, tmp_path, finder):
    photo_page(driver, base_url)
    path = tmp_path / "large.jpg"
    with Image.open(PHOTOS / "obama.jpg") as image:
        large = Image.new("RGB", (8000, 6000), (200, 190, 180))
        large.paste(image.resize((image.width * 6, image.height * 6), Image.Resampling.BICUBIC), (2500, 1000))
    large.save(path, quality=85)
    del large
    photo = choose_photo(driver, path)
    assert not photo["problem"], photo["message"]
    assert photo["original"] == [8000, 6000] and photo["size"] == [2048, 1536]  # the page's working copy
    assert "8000x6000" in photo["message"]
    # read at a quarter of its size, the face still gives nearly align.py's crop of the full photo
    difference = np.abs(page_input(photo) - python_faces(finder, path)[0]) * 255
    print(f"8000x6000: {difference.mean():.2f} levels apart on average")
    assert difference.mean() < 2


@pytest.mark.parametrize("kind", ["no face", "not an image", "empty"])
def test_a_photo_without_a_face_or_not_a_photo_gives_a_message_and_the_page_goes_on(driver, base_url, tmp_path, kind):
    photo_page(driver, base_url)
    choose_photo(driver, PHOTOS / "collins.jpg")
    before = np.asarray(driver.execute_script("return explorer.z()"))
    if kind == "no face":
        path = tmp_path / "landscape.png"
        y, x = np.mgrid[0:480, 0:640]
        sky = np.stack([80 + x / 8, 120 + y / 6, 200 - y / 4], axis=-1)
        Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8)).save(path)
        message = "No face found in landscape.png"
    elif kind == "not an image":
        path = tmp_path / "notes.jpg"
        path.write_text("a text file with a photo's name\n" * 100)
        message = "notes.jpg is not an image this browser can read"
    else:
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
        message = "empty.png is not an image this browser can read"
    photo = choose_photo(driver, path)
    assert photo["problem"] and message in photo["message"]
    assert driver.find_element("id", "photo-message").is_displayed()
    assert driver.execute_script("return explorer.status") == "ready"
    np.testing.assert_array_equal(driver.execute_script("return explorer.z()"), before)  # the face shown stays
    assert driver.find_element("id", "new-face").is_enabled()
    driver.find_element("id", "new-face").click()  # and the page goes on
    assert idle(driver)["source"] == "sample"
    assert not choose_photo(driver, PHOTOS / "obama.jpg")["problem"]  # so do photos


@pytest.mark.parametrize("name", ["obama.jpg", "decoder.onnx"])
def test_a_wrong_file_in_the_model_picker_leaves_the_model_loaded(driver, base_url, tmp_path, name):
    photo_page(driver, base_url)
    model = driver.execute_script("return explorer.info().model")
    z = driver.execute_script("return explorer.z()")
    path = tmp_path / name
    if name.endswith(".onnx"):
        path.write_bytes(b"not an ONNX file")
        message = "decoder.onnx is not an ONNX model"
    else:
        shutil.copyfile(PHOTOS / name, path)
        message = "No decoder among obama.jpg"
    driver.find_element("id", "files").send_keys(str(path))
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, LOAD_TIMEOUT).until(lambda d: d.find_element("id", "model-message").text)
    text = driver.find_element("id", "model-message").text
    assert message in text and "stays loaded" in text
    assert driver.execute_script("return explorer.status") == "ready"
    assert not driver.find_element("id", "error").is_displayed()
    assert driver.execute_script("return explorer.info().model") == model
    assert driver.execute_script("return explorer.z()") == z
    assert driver.find_element("id", "new-face").is_enabled()
    driver.find_element("id", "new-face").click()
    assert idle(driver)["source"] == "sample" and driver.execute_script("return explorer.z()") != z


def test_a_model_without_an_encoder_says_so_for_photos(driver, base_url):
    assert open_page(driver, base_url, "?model=runs/density") == "ready"
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, LOAD_TIMEOUT).until(lambda d: d.execute_script("return explorer.photo().problem"))
    assert "no encoder.onnx" in driver.execute_script("return explorer.photo().message")
    photo = choose_photo(driver, PHOTOS / "obama.jpg")
    assert photo["problem"] and "no encoder.onnx" in photo["message"]
    assert driver.execute_script("return explorer.status") == "ready"


def y4m(path: Path, picture: Image.Image) -> None:
    """A one-frame YUV4MPEG2 video of a picture, for Chromium's fake camera."""
    picture = picture.convert("RGB").crop((0, 0, picture.width // 2 * 2, picture.height // 2 * 2))
    y, cb, cr = picture.convert("YCbCr").split()
    half = (picture.width // 2, picture.height // 2)
    with path.open("wb") as video:
        video.write(f"YUV4MPEG2 W{picture.width} H{picture.height} F30:1 Ip A1:1 C420jpeg\n".encode())
        video.write(b"FRAME\n" + y.tobytes() + cb.resize(half).tobytes() + cr.resize(half).tobytes())


def test_the_camera_gives_a_photo(base_url, tmp_path, finder):
    from selenium.webdriver.support.ui import WebDriverWait

    video = tmp_path / "camera.y4m"
    with Image.open(PHOTOS / "obama.jpg") as image:
        y4m(video, image)
    camera = start_chromium(
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    )
    try:
        photo_page(camera, base_url)
        camera.find_element("id", "camera").click()
        WebDriverWait(camera, LOAD_TIMEOUT).until(
            lambda d: d.execute_script("return document.getElementById('camera-video').videoWidth > 0")
        )
        done = camera.execute_script("return explorer.photosDone")
        camera.find_element("id", "snap").click()
        WebDriverWait(camera, LOAD_TIMEOUT).until(lambda d: d.execute_script("return explorer.photosDone") > done)
        photo = camera.execute_script("return explorer.photo()")
        assert not photo["problem"], photo["message"]
        assert photo["original"] == [576, 720] and len(photo["faces"]) == 1
        # the picture went through video colour (4:2:0, another YCbCr range): its colours shift a
        # little, but the face is found where align.py finds it in the file, and aligned alike
        import images

        [face] = finder.find(images.read_pixels(PHOTOS / "obama.jpg"))
        assert np.abs(np.asarray(photo["faces"][0]["points"]) - face.points).max() < 2
        python = python_faces(finder, PHOTOS / "obama.jpg")[0]
        assert np.corrcoef(page_input(photo).ravel(), python.ravel())[0, 1] > 0.98
        assert idle(camera)["source"] == "photo"
        camera.find_element("id", "camera-stop").click()
        assert not camera.find_element("id", "camera-panel").is_displayed()
    finally:
        camera.quit()


def test_photo_screenshot(driver, base_url, tmp_path):
    """The page editing tests/photos/obama.jpg (a little smile); UPDATE_SCREENSHOT=1 makes it the
    README's docs/images/web_explorer_photo.png."""
    photo_page(driver, base_url)
    screenshot = PHOTO_SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / PHOTO_SCREENSHOT.name
    choose_photo(driver, PHOTOS / "obama.jpg")
    set_range(driver, 'input[data-attribute="Smiling"]', 1.0)
    assert idle(driver)["source"] == "photo"
    page, frame = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]"
    )
    driver.set_window_size(1280, page + frame)
    try:
        assert driver.save_screenshot(str(screenshot))
    finally:
        driver.set_window_size(1280, 1000)
    with Image.open(screenshot) as shot:
        crop = driver.find_element("id", "photo-crop").rect
        shown = np.asarray(shot.convert("RGB").crop((crop["x"], crop["y"], crop["x"] + 128, crop["y"] + 128)))
    assert shown.std() > 10  # the aligned photo, not an empty frame


# --------------------------------------------------------------------------- what serve.py serves
SERVED = {  # what the page loads
    "web/index.html": "<!doctype html>",
    "web/app.js": "// app",
    "web/style.css": "/* css */",
    "web/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs": "// ort",
    "web/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm": "wasm",
    "pretrained/celeba64/decoder.onnx": "decoder",
    "pretrained/celeba64/latent_density.json": "{}",
    "pretrained/celeba64/encoder.onnx": "encoder",
    "pretrained/face_detector/face_detector.onnx": "detector",
    "pretrained/face_detector/face_landmarks.onnx": "landmarks",
    "runs/exported/decoder.onnx": "decoder",
    "runs/exported/encoder.onnx": "encoder",
    "runs/exported/attribute_directions.json": "{}",
    "runs/deep/er/decoder.onnx": "decoder",
}
REFUSED = {  # everything else
    ".git/config": "secret",
    "README.md": "secret",
    "web/serve.py": "secret",
    "web/package.json": "secret",
    "web/.env": "secret",
    "web/node_modules/onnxruntime-web/package.json": "secret",
    "web/node_modules/other/index.js": "secret",
    "pretrained/celeba64/config.json": "secret",
    "pretrained/face_detector/README.md": "secret",
    "pretrained/face_detector/LICENSE": "secret",
    "pretrained/face_detector/other.onnx": "secret",
    "pretrained/other/face_detector.onnx": "secret",
    "runs/face_detector/face_landmarks.onnx": "secret",
    "runs/exported/config.json": "secret",
    "runs/exported/reconstructions.png": "secret",
    "runs/exported/.hidden/decoder.onnx": "secret",
    "runs/.hidden/decoder.onnx": "secret",
    "runs/training/config.json": "secret",
    "runs/training/attribute_directions.json": "secret",  # no decoder.onnx: not an exported folder
    "runs/training/latent_density.json": "secret",
    "runs/training/encoder.onnx": "secret",
}


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory) -> Path:
    """A repository as serve.py sees it, with symbolic links that lead out of the served folders."""
    root = tmp_path_factory.mktemp("repo")
    for name, content in {**SERVED, **REFUSED}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    outside = tmp_path_factory.mktemp("outside")
    (outside / "decoder.onnx").write_text("secret")
    (root / "runs" / "exported" / "latent_density.json").symlink_to(outside / "decoder.onnx")
    (root / "runs" / "linked").symlink_to(outside, target_is_directory=True)
    (root / "web" / "secret.js").symlink_to(root / "README.md")  # inside the repository, outside web/
    (root / "runs" / "inside").mkdir()
    (root / "runs" / "inside" / "decoder.onnx").symlink_to(root / "runs" / "exported" / "decoder.onnx")
    (root / "runs" / "big").mkdir()
    with (root / "runs" / "big" / "decoder.onnx").open("wb") as big:
        big.truncate(64 << 20)  # sparse: no disk space
    return root


@pytest.fixture(scope="module")
def port(fake_repo):
    with running(load_serve().make_server(fake_repo, port=0, quiet=True)) as server:
        yield server.server_address[1]


def request(port: int, target: str, host: str | None = "127.0.0.1", method: str = "GET"):
    """(status, headers, body) of one request with the Host header given (None: no Host header)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode(errors="replace")
    finally:
        connection.close()


def test_serves_the_files_the_page_loads(port):
    for name, content in SERVED.items():
        status, headers, body = request(port, f"/{name}")
        assert (status, body) == (200, content), name
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp" and headers["Cache-Control"] == "no-cache"
    kinds = {"index.html": "text/html", ".mjs": "text/javascript", ".wasm": "application/wasm"}
    for end, kind in kinds.items():
        name = next(name for name in SERVED if name.endswith(end))
        assert request(port, f"/{name}")[1]["Content-Type"].startswith(kind)
    assert request(port, "/web/")[2] == SERVED["web/index.html"]
    assert request(port, "/web/?model=runs/exported&seed=3")[0] == 200
    status, headers, body = request(port, "/pretrained/celeba64/decoder.onnx", method="HEAD")
    assert (status, headers["Content-Length"], body) == (200, str(len("decoder")), "")
    # a symbolic link that stays inside the served folder is followed
    assert request(port, "/runs/inside/decoder.onnx")[:3:2] == (200, "decoder")
    for target in ("/", "/web", "/web?model=runs/exported"):
        status, headers, _ = request(port, target)
        assert status == 301 and headers["Location"] == "/web/" + target.partition("?")[1] + target.partition("?")[2]


@pytest.mark.parametrize(
    "target",
    [f"/{name}" for name in REFUSED]
    + ["/runs/exported/latent_density.json", "/runs/linked/decoder.onnx", "/web/secret.js"]  # links out
    + ["/runs/", "/runs/exported/", "/pretrained/", "/web/node_modules/", "/web/node_modules/onnxruntime-web/dist/"]
    + ["/web/../README.md", "/web/%2e%2e/README.md", "/web/..%2fREADME.md", "/%2egit/config", "/web//app.js"],
)
def test_refuses_everything_else(port, target):
    status, _, body = request(port, target)
    assert status == 404 and "secret" not in body


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.0.0.1:{port}", True),
        ("localhost", True),
        ("LocalHost:{port}", True),
        ("localhost:9000", True),  # an SSH tunnel's port
        ("[::1]:{port}", True),
        (None, False),
        ("", False),
        ("evil.example", False),
        ("evil.example:{port}", False),
        ("127.0.0.1.evil.example:{port}", False),
        ("localhost.evil.example", False),
        ("192.168.1.20:{port}", False),
        ("user@localhost:{port}", False),
        ("localhost:port", False),
        ("localhost:{port}:{port}", False),
    ],
)
def test_answers_only_to_local_host_names(port, host, allowed):
    status, _, body = request(
        port, "/runs/exported/decoder.onnx", host=None if host is None else host.format(port=port)
    )
    if allowed:
        assert (status, body) == (200, "decoder")
    else:
        assert status == 403 and "decoder" not in body


@pytest.mark.parametrize(
    "target",
    [
        "/web/%00",
        "/web/app.js%00.png",
        "/runs/exported/decoder.onnx%00",
        "/web/%ff",
        "/web/%",
        "/web/%zz",
        "/web\\app.js",
        "http://127.0.0.1/web/app.js",  # the absolute form
        "*",
        "/runs/" + "x" * 5000 + "/decoder.onnx",
    ],
)
def test_malformed_paths_get_an_answer_and_no_traceback(port, target, capsys):
    assert request(port, target)[0] in (400, 404)
    assert request(port, "/web/app.js")[0] == 200  # the server goes on
    assert "Traceback" not in capsys.readouterr().err


def test_command_line_errors(capsys):
    serve = load_serve()
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--port", "70000"])
    assert exit_info.value.code == 2 and "not a port number from 0 to 65535" in capsys.readouterr().err
    with running(serve.make_server(WEB, port=0, quiet=True)) as server, pytest.raises(SystemExit) as exit_info:
        serve.main(["--port", str(server.server_address[1]), "--quiet"])  # a port in use
    assert str(exit_info.value.code).startswith("error: cannot listen on 127.0.0.1:")
    assert "give another --port" in str(exit_info.value.code)


def test_a_browser_that_goes_away_mid_download_gives_no_traceback(port, capsys):
    for _ in range(3):  # as a reload while decoder.onnx downloads
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"GET /runs/big/decoder.onnx HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert connection.recv(12) == b"HTTP/1.0 200"
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
    assert request(port, "/web/app.js")[0] == 200
    time.sleep(0.5)  # the handlers of the reset connections finish
    assert "Traceback" not in capsys.readouterr().err
