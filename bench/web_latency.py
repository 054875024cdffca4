"""The face explorer's speed in headless Chromium, next to Python onnxruntime on the same decoder.

    (cd web && npm ci)                  # once: onnxruntime-web
    python bench/web_latency.py         # pretrained/celeba64
    python bench/web_latency.py --model runs/<name> --repeats 5 --threads 2
    python bench/web_latency.py --photo my_photo.jpg --photos 10 --large 8000x6000

Each repeat starts a new headless Chromium (a fresh profile, so an empty HTTP cache) on the page
served by web/serve.py and measures, in the page:
- first face: milliseconds from navigation start until the first face is drawn, cold (page,
  onnxruntime-web's module and WebAssembly, decoder.onnx, session creation, first decode);
- decode: milliseconds per face at batch 1 (session.run with the output read back), the median
  of --decodes calls on seeded random z;
- slider: frames per second while the Smiling slider (the temperature slider for a model
  without attribute directions) moves one step per frame: each step sets the slider, waits for
  the decode and the canvas draw, then for the next frame (requestAnimationFrame), so it cannot
  exceed the display rate, which is measured too (frames with no decoding);
- photo: milliseconds from choosing a photo (the file input's change event) to its first edited
  face drawn (the Smiling slider at 1), the models loaded: read the file, find the faces (the
  detector on each of align.py's views, Face Mesh on each face), align one (Face Mesh again in
  its aligned frame, the warp, the crop), encode, decode, draw. The median of --photos choices
  of --photo, with the parts (read, find, align, encode) as medians too; then the same for a
  large photo (--large, a phone's 12 megapixels by default) made from --photo in a temporary
  folder: scaled up to fit, centred on a grey canvas, with noise so that it is as costly to
  decode as a camera's JPEG.
Python onnxruntime is measured in this process on the same decoder.onnx: session creation plus
the first decode (the interpreter and imports already loaded), and the median batch-1 decode,
with 1 intra-op thread (as the page's default) and with onnxruntime's default threads.
The table gives the best and the median over the repeats. Not a test: the figures depend on the
machine and its load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import machine_lines  # noqa: E402

import inference  # noqa: E402  (numpy and onnxruntime only)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ORT_WEB = REPO / "web" / "node_modules" / "onnxruntime-web"

# explorer.photo().timings: from choosing the photo to its edited face drawn, and its parts
PHOTO_PARTS = {
    "shownMs": "{name} to its first edited face (ms)",
    "readMs": "of which reading the file (ms)",
    "findMs": "finding the faces (ms)",
    "alignMs": "aligning it, with its second look (ms)",
    "encodeMs": "encoding it (ms)",
}

SLIDER_SCRIPT = """
const [steps, done] = [arguments[0], arguments[arguments.length - 1]];
// the Smiling slider, or the temperature slider for a model without attribute directions
const input = document.querySelector('input[data-attribute="Smiling"]') ?? document.getElementById('temperature');
const [low, high] = [Number(input.min), Number(input.max)];
const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
(async () => {
  await explorer.whenIdle();
  let start = await frame();
  for (let i = 0; i < 30; i++) await frame();
  const display = 30 / ((performance.now() - start) / 1000);
  start = performance.now();
  for (let i = 0; i < steps; i++) {
    input.value = String(low + (high - low) * ((i % 41) / 40));
    input.dispatchEvent(new Event('input', { bubbles: true }));
    await explorer.whenIdle();
    await frame();
  }
  done([steps / ((performance.now() - start) / 1000), display]);
})();
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the face explorer in headless Chromium and Python onnxruntime on the same decoder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="pretrained/celeba64", help="model folder below the repository root")
    parser.add_argument("--repeats", type=int, default=5, help="browser starts (cold loads)")
    parser.add_argument("--decodes", type=int, default=50, help="timed batch-1 decodes per repeat")
    parser.add_argument("--slider-steps", type=int, default=60, help="slider steps per repeat")
    parser.add_argument("--threads", type=int, default=1, help="WebAssembly threads in the page")
    parser.add_argument("--photo", default=str(REPO / "tests" / "photos" / "obama.jpg"), help="the photo chosen")
    parser.add_argument("--photos", type=int, default=7, help="photo choices timed per repeat, per photo")
    parser.add_argument(
        "--large",
        default="4000x3000",
        help="WIDTHxHEIGHT of the large photo made from --photo; 'none' for no large photo",
    )
    args = parser.parse_args(argv)
    if not Path(args.photo).is_file():
        parser.error(f"--photo {args.photo} is not a file")
    args.large = parse_size(parser, args.large)
    for name in ("repeats", "decodes", "slider_steps", "threads", "photos"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def parse_size(parser: argparse.ArgumentParser, text: str) -> tuple[int, int] | None:
    if text == "none":
        return None
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        parser.error(f"--large {text}: give WIDTHxHEIGHT, for example 4000x3000, or none")
    if min(width, height) < 1:
        parser.error(f"--large {text}: both sides must be at least 1 pixel")
    return width, height


def make_large_photo(photo: Path, size: tuple[int, int], folder: Path) -> Path:
    """photo scaled up to fit size, centred on grey, with seeded noise (camera JPEGs carry detail
    everywhere, which is what makes them slow to decode), saved as a quality-90 JPEG."""
    from PIL import Image

    with Image.open(photo) as image:
        image = image.convert("RGB")
        scale = min(size[0] / image.width, size[1] / image.height)
        fitted = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", size, (128, 124, 120))
    canvas.paste(fitted, ((size[0] - fitted.width) // 2, (size[1] - fitted.height) // 2))
    pixels = np.asarray(canvas, dtype=np.int16)
    pixels += np.random.default_rng(0).integers(-6, 7, pixels.shape, dtype=np.int16)
    path = folder / f"{photo.stem}_{size[0]}x{size[1]}.jpg"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def load_serve():
    spec = importlib.util.spec_from_file_location("serve", REPO / "web" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    browser.set_script_timeout(120)
    return browser


def browser_repeat(url: str, args: argparse.Namespace, photos: list[Path]) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    browser = start_browser()
    try:
        browser.get(url)
        status = WebDriverWait(browser, 120, poll_frequency=0.02).until(
            lambda d: d.execute_script(
                "return window.explorer && (explorer.status === 'error' || explorer.decodes > 0) ? explorer.status : null"
            )
        )
        if status != "ready":
            sys.exit(f"the page shows an error: {browser.execute_script('return explorer.error')}")
        timings = browser.execute_script("return explorer.info().timings")
        decodes = browser.execute_async_script(
            "const done = arguments[arguments.length - 1]; explorer.timeDecodes(arguments[0]).then(done);",
            args.decodes,
        )
        fps, display = browser.execute_async_script(SLIDER_SCRIPT, args.slider_steps)
        return {
            "photos": [photo_timings(browser, path, args.photos) for path in photos],
            "version": browser.capabilities.get("browserVersion", "?"),
            "first_face": timings["firstFaceMs"],
            "session": timings["sessionMs"],
            "decode": statistics.median(decodes),
            "fps": fps,
            "display": display,
        }
    finally:
        browser.quit()


def photo_timings(browser, photo: Path, count: int) -> dict:
    """Medians over `count` choices of the photo: ms to the first edited face, and its parts."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 120, poll_frequency=0.05).until(
        lambda d: d.execute_script("return explorer.photoReady || explorer.photo().problem")
    )
    if not browser.execute_script("return explorer.photoReady"):
        sys.exit(f"the page cannot edit photos: {browser.execute_script('return explorer.photo().message')}")
    browser.execute_script(
        "const input = document.querySelector('input[data-attribute=\"Smiling\"]') ?? document.getElementById('temperature');"
        "input.value = '1'; input.dispatchEvent(new Event('input', {bubbles: true}));"
    )
    runs = []
    for _ in range(count):
        done = browser.execute_script("return explorer.photosDone")
        browser.find_element("id", "photo").send_keys(str(photo))
        WebDriverWait(browser, 120, poll_frequency=0.01).until(
            lambda d, done=done: d.execute_script("return explorer.photosDone") > done
        )
        shown = browser.execute_script("return explorer.photo()")
        if shown["problem"]:
            sys.exit(f"the page refused the photo: {shown['message']}")
        runs.append(shown["timings"])
    medians = {key: statistics.median(run[key] for run in runs) for key in PHOTO_PARTS}
    return {**medians, "size": shown["size"], "original": shown["original"]}


def python_repeat(path: Path, threads: int, decodes: int, latent_dim: int) -> dict:
    start = time.perf_counter()
    session = inference.make_session(path, threads=threads)
    loaded = time.perf_counter()
    rng = np.random.default_rng(0)
    inference.decode(session, rng.standard_normal((1, latent_dim)))
    first = time.perf_counter()
    times = []
    for _ in range(decodes):
        z = rng.standard_normal((1, latent_dim)).astype(np.float32)
        begin = time.perf_counter()
        inference.decode(session, z)
        times.append(time.perf_counter() - begin)
    return {
        "first_face": (first - start) * 1000,
        "session": (loaded - start) * 1000,
        "decode": statistics.median(times) * 1000,
    }


def summary(values: list[float], higher_is_better: bool = False) -> str:
    best = max(values) if higher_is_better else min(values)
    return f"{best:.1f} / {statistics.median(values):.1f}"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    folder = (REPO / args.model).resolve()
    decoder = folder / "decoder.onnx"
    if not decoder.is_file():
        sys.exit(f"{decoder} does not exist; export a run with export_onnx.py or pass --model")
    if not (ORT_WEB / "dist").is_dir():
        sys.exit("web/node_modules has no onnxruntime-web: run `npm ci` in web/ first")
    if importlib.util.find_spec("selenium") is None or not Path(CHROMEDRIVER).is_file():
        sys.exit("needs selenium (pip install -r requirements.txt) and Debian's chromium and chromium-driver")
    latent_dim = int(inference.read_onnx_metadata(decoder)["latent_dim"])

    serve = load_serve()
    server = serve.make_server(REPO, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"{serve.page_url(server)}?model={args.model}&seed=1&threads={args.threads}"

    browser, python_one, python_default = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        photos = [Path(args.photo).resolve()]
        if args.large:
            photos.append(make_large_photo(photos[0], args.large, Path(folder)))
        for repeat in range(args.repeats):
            browser.append(browser_repeat(url, args, photos))
            python_one.append(python_repeat(decoder, 1, args.decodes, latent_dim))
            python_default.append(python_repeat(decoder, 0, args.decodes, latent_dim))
            shown = ", ".join(
                f"{photo.name} {r['shownMs']:.0f} ms" for photo, r in zip(photos, browser[-1]["photos"], strict=True)
            )
            print(
                f"repeat {repeat + 1}/{args.repeats}: first face {browser[-1]['first_face']:.0f} ms, "
                f"decode {browser[-1]['decode']:.2f} ms, slider {browser[-1]['fps']:.1f} fps, "
                f"photo to edited face: {shown}",
                flush=True,
            )
        sizes = [photo.stat().st_size for photo in photos]
    server.shutdown()

    ort_web = json.loads((ORT_WEB / "package.json").read_text())["version"]
    print()
    for line in machine_lines():
        print(line)
    print(f"chromium {browser[0]['version']} (headless), onnxruntime-web {ort_web}, {decoder.relative_to(REPO)}")
    print(
        f"best / median of {args.repeats} repeats; decode: median of {args.decodes} batch-1 calls per repeat; "
        f"photo: median of {args.photos} choices of each photo per repeat\n"
    )
    web = f"browser: onnxruntime-web, WebAssembly, {args.threads} thread{'s' if args.threads > 1 else ''}"
    print(f"| figure | {web} | Python onnxruntime, 1 thread | Python onnxruntime, default threads |")
    print("| --- | --- | --- | --- |")
    rows = [
        ("first face, cold (ms)", "first_face"),
        ("of which session creation (ms)", "session"),
        ("decode, batch 1 (ms per face)", "decode"),
    ]
    for label, key in rows:
        cells = [summary([r[key] for r in results]) for results in (browser, python_one, python_default)]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"| slider (frames per second) | {summary([r['fps'] for r in browser], higher_is_better=True)} | | |")
    print(f"| display rate, no decoding (frames per second) | {summary([r['display'] for r in browser], True)} | | |")
    for index, (photo, size) in enumerate(zip(photos, sizes, strict=True)):
        runs = [r["photos"][index] for r in browser]
        width, height = runs[0]["original"]
        read = "" if runs[0]["size"] == runs[0]["original"] else ", read at {}x{}".format(*runs[0]["size"])
        name = f"{photo.name} ({width}x{height}, {size / 1e6:.1f} MB{read})"
        for key, label in PHOTO_PARTS.items():
            print(f"| {label.format(name=name)} | {summary([r[key] for r in runs])} | | |")
    print(
        "\nBrowser first face: from navigation start, in a new browser profile. Python first face: session "
        "creation and the first decode in a running process (interpreter start and imports not counted)."
    )


if __name__ == "__main__":
    main()
