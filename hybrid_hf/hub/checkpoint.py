"""Prepare a self-contained checkpoint folder and upload it to the Hugging Face Hub."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from .card import EvalResults, render_model_card

REQUIRED_FILES = ("config.json", "generation_config.json", "README.md")


class HubError(RuntimeError):
    """An upload to the Hub could not be done; the message says why and what to do."""


def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is a valid Hub model id (``name`` or ``namespace/name``), else raise ``ValueError``.

    Uses huggingface_hub's own validator, offline, so that a bad id fails before any checkpoint is prepared or any
    request is sent; the message is one line.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str):
        raise ValueError(f"invalid Hub repository id {repo_id!r}; allowed: a string 'name' or 'namespace/name'.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        reason = " ".join(str(err).split())
        raise ValueError(
            f"invalid Hub repository id {repo_id!r}; allowed: 'name' or 'namespace/name' ({reason})"
        ) from None
    return repo_id


def _load(model: nn.Module | str | Path) -> tuple[nn.Module, PreTrainedTokenizerBase | None]:
    if isinstance(model, nn.Module):
        return model, None
    path = Path(model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"prepare_checkpoint: {str(path)!r} is not a model folder (no config.json).")
    loaded = AutoModelForCausalLM.from_pretrained(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return loaded, tokenizer


def prepare_checkpoint(
    model: nn.Module | str | Path,
    output_dir: str | Path,
    *,
    tokenizer: PreTrainedTokenizerBase | str | Path | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    description: str | None = None,
    training_data: str | None = None,
    datasets: Sequence[str] = (),
    eval_results: EvalResults | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
    template: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write everything a Hub repository needs into ``output_dir``, without touching the network.

    The folder gets ``model.safetensors``, ``config.json`` with ``auto_map``, the remote-code modelling files,
    ``generation_config.json``, the tokenizer (if any) and a ``README.md`` model card. A PEFT model is merged first.
    Special-token ids missing from the model's config and generation config are filled in (on the model object)
    from the tokenizer, so that ``generate`` works out of the box after loading.

    Args:
        model: A hybrid_hf model, a PEFT-wrapped one, or the path of a saved model folder.
        output_dir: Folder to create; must be empty unless ``overwrite``.
        tokenizer: Tokenizer or its folder; by default the one saved beside a model given as a path.
        model_name, repo_id, description, training_data, datasets, eval_results, license, base_model, template:
            Passed to ``hybrid_hf.hub.render_model_card``.
        overwrite: Allow writing into a non-empty folder (files of the same name are replaced).

    Returns:
        The folder.
    """
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"prepare_checkpoint: {str(out)!r} is not empty; pass overwrite=True to reuse it.")
    out.mkdir(parents=True, exist_ok=True)
    model, found_tokenizer = _load(model)
    if hasattr(model, "merge_and_unload"):  # PEFT: ship one plain checkpoint
        model = model.merge_and_unload()
    if isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    tokenizer = tokenizer or found_tokenizer

    config = model.config
    if tokenizer is not None:
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            if getattr(config, name, None) is None and getattr(tokenizer, name, None) is not None:
                setattr(config, name, getattr(tokenizer, name))
    gen = getattr(model, "generation_config", None) or GenerationConfig.from_model_config(config)
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        if getattr(gen, name, None) is None and getattr(config, name, None) is not None:
            setattr(gen, name, getattr(config, name))
    model.generation_config = gen
    model.save_pretrained(out)
    if not (out / "generation_config.json").exists():
        gen.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    card = render_model_card(
        model,
        model_name=model_name,
        repo_id=repo_id,
        description=description,
        training_data=training_data,
        datasets=datasets,
        eval_results=eval_results,
        license=license,
        base_model=base_model,
        has_tokenizer=tokenizer is not None,
        template=template,
    )
    (out / "README.md").write_text(card, encoding="utf-8")
    check_checkpoint(out)
    return out


def check_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Verify a prepared folder: required files, safetensors weights, and every remote-code file ``auto_map`` names.

    Returns the parsed ``config.json``; raises ``ValueError`` listing what is missing.
    """
    folder = Path(folder)
    problems = [f"missing {name}" for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        problems.append("no *.safetensors weights")
    if any(folder.glob("*.bin")):
        problems.append("pickle *.bin weights present")
    config: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        auto_map = config.get("auto_map") or {}
        if "AutoConfig" not in auto_map or "AutoModelForCausalLM" not in auto_map:
            problems.append("config.json auto_map lacks AutoConfig/AutoModelForCausalLM")
        for ref in auto_map.values():
            module = (ref[0] if isinstance(ref, list) else ref).rsplit(".", 1)[0]
            if not (folder / f"{module}.py").is_file():
                problems.append(f"remote-code file {module}.py missing")
    if problems:
        raise ValueError(f"check_checkpoint({str(folder)!r}): " + "; ".join(sorted(set(problems))))
    return config


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError]  # ConnectionError, OfflineModeIsEnabled, requests errors
    for module in ("httpx", "httpx2"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    api: Any = None,
    retry_hint: str | None = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` to it; returns the commit URL.

    The token comes from ``token``, else the usual places (``HF_TOKEN``, the token saved by ``hf auth login``).
    ``revision`` names a branch, created from main if missing. Raises ``HubError`` with a clear message when the
    Hub cannot be reached (offline mode, no network) or refuses the upload (no or wrong token); ``retry_hint``
    replaces the default advice at its end.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    check_repo_id(repo_id)
    folder = Path(folder)
    check_checkpoint(folder)
    later = retry_hint or (
        f"The checkpoint is ready in {str(folder)!r}; upload it later with `hybrid-hf push {folder} {repo_id}`."
    )
    if _offline():
        raise HubError(f"Cannot upload to the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE). {later}")
    api = api or HfApi(token=token)
    endpoint = getattr(api, "endpoint", None) or constants.ENDPOINT
    message = commit_message or f"Upload {repo_id} (hybrid_hf)"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=message,
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
        )
    except LocalTokenNotFoundError as err:
        raise HubError(
            f"No Hugging Face token found: set HF_TOKEN, run `hf auth login`, or pass a token. {later}"
        ) from err
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        hint = " Check that the token has write access to this namespace." if status in (401, 403) else ""
        raise HubError(f"The Hub at {endpoint} refused the upload to {repo_id!r}: {err}.{hint} {later}") from err
    except _network_errors() as err:
        raise HubError(
            f"Cannot reach the Hugging Face Hub at {endpoint} to upload {repo_id!r} "
            f"({type(err).__name__}: {err}). Check the network connection or HF_ENDPOINT. {later}"
        ) from err
    return str(getattr(info, "commit_url", info))


def publish(
    model: nn.Module | str | Path,
    repo_id: str,
    *,
    output_dir: str | Path | None = None,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    api: Any = None,
    **card_kwargs: Any,
) -> str:
    """Prepare a checkpoint folder (``prepare_checkpoint``) and upload it (``push_folder``) in one call.

    ``output_dir`` keeps the prepared folder; by default a temporary one is used and removed afterwards.
    Extra keyword arguments (``tokenizer``, ``training_data``, ``eval_results``, ...) go to ``prepare_checkpoint``.
    """
    check_repo_id(repo_id)
    push = dict(token=token, private=private, revision=revision, commit_message=commit_message, create_pr=create_pr,
                api=api)
    if output_dir is not None:
        folder = prepare_checkpoint(model, output_dir, repo_id=repo_id, **card_kwargs)
        return push_folder(folder, repo_id, **push)
    hint = "Nothing was uploaded; pass output_dir (CLI: --output-dir) to keep the prepared folder for a later push."
    with tempfile.TemporaryDirectory(prefix="hybrid_hf_push_") as tmp:
        folder = prepare_checkpoint(model, Path(tmp) / "checkpoint", repo_id=repo_id, **card_kwargs)
        return push_folder(folder, repo_id, retry_hint=hint, **push)
