"""The tiny text-to-image pipeline folders of ``tiny_pipelines`` round-trip and run, offline.

* each folder (SD3, Flux, Sana, SDXL, PixArt-Sigma) is safetensors only, loads with its pipeline
  class and makes finite 1 x 3 x 32 x 32 images in [0, 1] from a prompt in two steps;
* (the pipelines run with DPM-Solver swapped in, against dpmcli, in test_pipeline_families.py and
  test_dropin_pipelines.py);
* the offline T5 and Gemma tokenizers give the same ids after save_pretrained + from_pretrained.
"""

import pytest
import torch

# SanaPipeline and DPM-Solver's flow sigmas arrived in diffusers 0.32, Gemma2 in transformers 4.42.
pytest.importorskip("diffusers", minversion="0.32")
pytest.importorskip("transformers", minversion="4.42")

import diffusers
from tiny_pipelines import (
    CALL_OPTIONS,
    IMAGE_SIZE,
    PIPELINES,
    make_flux_pipeline_folder,
    make_gemma_tokenizer,
    make_t5_tokenizer,
)

KINDS = list(PIPELINES)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-pipelines")
    return {kind: builder(root / kind) for kind, (builder, _) in PIPELINES.items()}


def load(kind, folder):
    pipe = getattr(diffusers, PIPELINES[kind][1]).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, kind, seed=0, **options):
    options = {**CALL_OPTIONS[kind], **options}
    if kind == "pixart":
        options.setdefault("clean_caption", False)
    return pipe(
        prompt="a cat",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        **options,
    ).images


def check_images(images):
    assert images.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1
    assert images.std() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_folder_round_trips_and_runs(folders, kind):
    folder = folders[kind]
    weights = {p.suffix for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin")}
    assert weights == {".safetensors"}
    pipe = load(kind, folder)
    assert type(pipe).__name__ == PIPELINES[kind][1]
    images = generate(pipe, kind)
    check_images(images)
    torch.testing.assert_close(generate(pipe, kind), images)


@pytest.mark.parametrize("kind", ["sd3", "sdxl", "pixart"])
def test_default_size_is_the_tiny_size(folders, kind):
    pipe = load(kind, folders[kind])
    check_images(generate(pipe, kind, height=None, width=None))


def test_flux_without_guidance_embeds(tmp_path):
    pipe = load("flux", make_flux_pipeline_folder(tmp_path / "flux", guidance_embeds=False))
    assert pipe.transformer.config.guidance_embeds is False
    check_images(generate(pipe, "flux"))


@pytest.mark.parametrize(
    "make, cls", [(make_t5_tokenizer, "T5TokenizerFast"), (make_gemma_tokenizer, "GemmaTokenizerFast")]
)
def test_tokenizers_round_trip(tmp_path, make, cls):
    import transformers

    tokenizer = make()
    tokenizer.save_pretrained(tmp_path)
    loaded = getattr(transformers, cls).from_pretrained(tmp_path)
    prompts = ["a photo of a cat", "the red house", "xyz!", ""]
    assert loaded(prompts).input_ids == tokenizer(prompts).input_ids
    assert len(loaded) == len(tokenizer)
    ids = tokenizer("a cat").input_ids
    assert tokenizer.unk_token_id not in ids
    if cls == "T5TokenizerFast":
        assert ids[-1] == tokenizer.eos_token_id and tokenizer.pad_token_id == 0
    else:
        assert ids[0] == tokenizer.bos_token_id and tokenizer.pad_token_id == 0
