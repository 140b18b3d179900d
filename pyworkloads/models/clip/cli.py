"""The hooks of ``pyworkloads demo`` and ``pyworkloads run clip``.

``run clip`` has three modes:

    --image FILE... --labels "a cat,a dog"    zero-shot probabilities of each label per image
    --folder DATA --zero-shot                 zero-shot accuracy on a labelled folder
    --folder DATA --probe                     a linear probe (probe.LinearProbe) trained and
                                              tested on a seeded split of the folder

A labelled folder has one subfolder per class, named after it, with the images anywhere below it
(torchvision's ``ImageFolder`` layout): ``DATA/cat/1.jpg``, ``DATA/dog/a/2.png``.  Hidden
files and folders (names starting with ".") and files directly in DATA are ignored.  Other files
whose extension is not an image format's (``IMAGE_EXTENSIONS``) are skipped, and their count is
printed; a file with an image extension that cannot be decoded stops the run with its name, since
leaving it out silently would change the accuracy.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ... import kernels, ops
from ..common import check_int
from .api import from_preset
from .hf import from_pretrained
from .model import count_params, l2_normalize
from .probe import C_RANGE, LinearProbe, embed_images, stratified_split

__all__ = ["demo", "add_run_arguments", "run_cli", "read_image_folder", "IMAGE_EXTENSIONS"]

# the extensions torchvision's ImageFolder accepts
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FOLDER_TEMPLATE = "a photo of a {}."      # the paper's prompt for a class name


def demo() -> str:
    """Tiny random CLIP on two random images and three random texts, on the current backend."""
    m = from_preset("clip-tiny", seed=0)
    t, v = m.config.text_config, m.config.vision_config
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, v.num_channels, v.image_size, v.image_size), dtype=np.float32)
    ids = rng.integers(0, t.eos_token_id, size=(3, 8))
    ids[:, 0], ids[:, -1] = t.bos_token_id, t.eos_token_id
    out = m(input_ids=ids, pixel_values=pixels)
    probs = ops.softmax(out.logits_per_image, axis=-1)
    return (f"clip-tiny ({count_params(m.config):,} params, backend {kernels.get_backend()}): "
            f"2 images x 3 texts -> logits_per_image {out.logits_per_image.shape}, "
            f"probs {np.round(probs.astype(np.float64), 3).tolist()}")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face CLIPModel directory "
                        "(config.json, *.safetensors, tokenizer.json)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", nargs="+", help="image file(s), ranked over --labels")
    source.add_argument("--folder", help="labelled images: one subfolder per class, named after "
                        "it (use with --zero-shot or --probe)")
    parser.add_argument("--labels", help='with --image: comma-separated labels, e.g. '
                        '"a cat,a dog"')
    parser.add_argument("--template", help='prompt around each label, e.g. "a photo of {}." '
                        f'(default: the label as given with --image, "{FOLDER_TEMPLATE}" with '
                        "--folder, underscores in folder names read as spaces)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--zero-shot", action="store_true",
                      help="with --folder: accuracy of zero-shot classification, per class too")
    mode.add_argument("--probe", action="store_true",
                      help="with --folder: train a linear probe on a split of the folder, report "
                      "the chosen C and the test accuracy")
    parser.add_argument("--test-fraction", type=float,
                        help="--probe: fraction of each class held out for testing (default 0.25)")
    parser.add_argument("--seed", type=int, help="--probe: seed of the test and validation "
                        "splits (default 0)")
    parser.add_argument("--C", type=float, dest="C", help="--probe: inverse regularisation "
                        "strength as in scikit-learn (default: chosen on a validation split of "
                        f"the training images over [{C_RANGE[0]:g}, {C_RANGE[1]:g}])")
    parser.add_argument("--standardize", action="store_true",
                        help="--probe: standardise each feature on the training images")
    parser.add_argument("--save-probe", metavar="PATH",
                        help="--probe: write the trained probe (safetensors) to PATH")
    parser.add_argument("--batch-size", type=int,
                        help="with --folder: images per forward pass (default 32)")


def _check_template(template: str) -> None:
    """--template must put the label somewhere, once: "a photo of {}." """
    try:
        a, b = template.format("a"), template.format("b")
    except (IndexError, KeyError, ValueError) as exc:
        raise ValueError(f"--template must contain one {{}} where the label goes, got "
                         f"{template!r} ({type(exc).__name__}: {exc})") from None
    if a == b:
        raise ValueError(f"--template must contain {{}} where the label goes, got {template!r} "
                         "(every label would give the same text)")


_PROBE_FLAGS = {"test_fraction": "--test-fraction", "seed": "--seed", "C": "--C",
                "standardize": "--standardize", "save_probe": "--save-probe"}


def _check_modes(args) -> None:
    """Each flag belongs to a mode; a flag given to another mode is an error, not ignored."""
    probe_flags = [flag for key, flag in _PROBE_FLAGS.items() if getattr(args, key, None)
                   not in (None, False)]
    if args.image is not None:
        if args.labels is None:
            raise ValueError("--image needs --labels (comma-separated), e.g. --labels "
                             '"a cat,a dog"')
        given = probe_flags + [f for f, on in (("--zero-shot", args.zero_shot),
                                               ("--probe", args.probe),
                                               ("--batch-size", args.batch_size is not None))
                               if on]
        if given:
            raise ValueError(f"{', '.join(given)}: only with --folder (--image ranks --labels "
                             "for each image)")
        return
    if args.labels is not None:
        raise ValueError("--labels is for --image; with --folder the class names are the "
                         "subfolder names")
    if not (args.zero_shot or args.probe):
        raise ValueError("--folder needs --zero-shot or --probe")
    if args.zero_shot and probe_flags:
        raise ValueError(f"{', '.join(probe_flags)}: only with --probe")
    if args.probe and args.template is not None:
        raise ValueError("--template: only with --zero-shot or --image (a probe reads no text)")


def run_cli(args) -> int:
    """One of the three modes (see the module docstring); bad arguments raise ValueError (the
    ``pyworkloads`` command prints them as one line)."""
    _check_modes(args)
    if args.folder is not None:
        return _run_folder(args)
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if not labels:
        raise ValueError(f"--labels needs at least one label (comma-separated), "
                         f"got {args.labels!r}")
    template = "{}" if args.template is None else args.template
    _check_template(template)
    m = from_pretrained(args.model)
    probs = m.zero_shot(list(args.image), labels, template=template)         # [images, labels]
    for path, row in zip(args.image, probs):
        print(path)
        for j in np.argsort(-row, kind="stable"):
            print(f"  {row[j]:7.2%}  {labels[j]}")
    return 0


# ---------------------------------------------------------------------------------------------
# --folder
# ---------------------------------------------------------------------------------------------
def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def read_image_folder(folder):
    """A labelled folder (see the module docstring) -> (image paths, class index per image
    int [B], class names sorted, number of files skipped)."""
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"--folder: no such folder {str(root)!r}")
    if not root.is_dir():
        raise NotADirectoryError(f"--folder: {str(root)!r} is a file, not a folder of class "
                                 "subfolders")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not _hidden(d, root))
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise ValueError(f"--folder: {str(root)!r} needs one subfolder of images per class and "
                         f"at least two classes, found {found} (e.g. {root}/cat/1.jpg, "
                         f"{root}/dog/2.jpg)")
    paths, labels, skipped = [], [], 0
    for k, name in enumerate(classes):
        files = sorted(f for f in (root / name).rglob("*") if f.is_file() and not _hidden(f, root))
        images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            raise ValueError(f"--folder: class folder {str(root / name)!r} has no images "
                             f"({len(files)} other files; image extensions: "
                             f"{' '.join(IMAGE_EXTENSIONS)})")
        skipped += len(files) - len(images)
        paths += images
        labels += [k] * len(images)
    return paths, np.asarray(labels), classes, skipped


def _per_class_table(classes, y, predicted) -> str:
    """Images, correct predictions and accuracy per class.  y, predicted int [B]."""
    width = max(len("class"), *map(len, classes))
    lines = [f"  {'class':<{width}}  images  correct  accuracy"]
    for k, name in enumerate(classes):
        n = int((y == k).sum())
        correct = int((predicted[y == k] == k).sum())
        lines.append(f"  {name:<{width}}  {n:6d}  {correct:7d}  {correct / n:8.1%}")
    return "\n".join(lines)


def _run_folder(args) -> int:
    batch_size = check_int(32 if args.batch_size is None else args.batch_size, "--batch-size")
    template = FOLDER_TEMPLATE if args.template is None else args.template
    if args.zero_shot:
        _check_template(template)
    paths, y, classes, skipped = read_image_folder(args.folder)
    print(f"{args.folder}: {len(paths)} images in {len(classes)} classes"
          + (f" ({skipped} file(s) without an image extension skipped)" if skipped else ""))
    if args.zero_shot:
        return _zero_shot_folder(args, paths, y, classes, template, batch_size)
    return _probe_folder(args, paths, y, classes, batch_size)


def _zero_shot_folder(args, paths, y, classes, template, batch_size) -> int:
    m = from_pretrained(args.model)
    prompts = [template.format(name.replace("_", " ")) for name in classes]
    text = l2_normalize(m.get_text_features(m.tokenize(prompts)))            # [Nc, E]
    image = embed_images(m, paths, batch_size, normalize=True)                # [B, E]
    predicted = (image @ text.T).argmax(axis=1)                               # [B]
    correct = int((predicted == y).sum())
    print(f"zero-shot accuracy: {correct / len(y):.1%} ({correct}/{len(y)} images, prompt "
          f"{template!r})")
    print(_per_class_table(classes, y, predicted))
    return 0


def _probe_folder(args, paths, y, classes, batch_size) -> int:
    seed = check_int(0 if args.seed is None else args.seed, "--seed", minimum=0)
    fraction = 0.25 if args.test_fraction is None else args.test_fraction
    if not 0 < fraction < 1:
        raise ValueError(f"--test-fraction must be between 0 and 1 (exclusive), got {fraction}")
    need = 3 if args.C is None else 2    # test + train (+ validation, to choose C)
    counts = np.bincount(y, minlength=len(classes))
    if counts.min() < need:
        name = classes[int(counts.argmin())]
        raise ValueError(f"--probe: class {name!r} has {counts.min()} image(s); each class needs "
                         f"at least {need} (one to test, one to train"
                         + (", one to validate the choice of C)" if need == 3 else ")"))
    probe = LinearProbe(C=args.C, standardize=args.standardize, random_state=seed)  # checks C
    train, test = stratified_split(y, fraction, seed, names=classes)
    left = np.bincount(y[train], minlength=len(classes))
    if args.C is None and left.min() < 2:
        raise ValueError(f"--test-fraction {fraction:g} leaves class "
                         f"{classes[int(left.argmin())]!r} one training image; choosing C needs "
                         "two (lower --test-fraction, or give --C)")
    m = from_pretrained(args.model)
    features = embed_images(m, paths, batch_size)                             # [B, E]
    names = np.asarray(classes)
    probe.fit(features[train], names[y[train]])
    print(f"probe: {len(train)} training / {len(test)} test images (seed {seed}, test fraction "
          f"{fraction:g}), {features.shape[1]} features"
          + (", standardized" if args.standardize else ""))
    if probe.search_ is None:
        print(f"C = {probe.C_:.4g} (given)")
    else:
        accuracy = probe.search_[probe.C_][0]
        print(f"chosen C = {probe.C_:.4g} (validation accuracy {accuracy:.1%} on "
              f"{probe.n_validation_} held-out training images; {len(probe.search_)} values "
              f"of C tried in [{C_RANGE[0]:g}, {C_RANGE[1]:g}])")
    # columns in probe.classes_ order, which is `classes` order: both sorted
    predicted = probe.decision_function(features[test]).argmax(axis=1)       # [test] indices
    correct = int((predicted == y[test]).sum())
    print(f"test accuracy: {correct / len(test):.1%} ({correct}/{len(test)} images)")
    print(_per_class_table(classes, y[test], predicted))
    if args.save_probe:
        probe.save(args.save_probe)
        print(f"saved the probe to {args.save_probe}")
    return 0
