"""Publishing a finished model folder on the Hub (fine-tuned classifiers and exported encoders alike)."""

from pathlib import Path


def push_model_folder(model_dir: Path, repo_id: str, private: bool = False, commit_message: str | None = None) -> str:
    """Create the model repo if needed and upload the whole folder (one commit). Returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(model_dir),
        commit_message=commit_message or "Upload MMAE model (mmae-hf)",
    )
    return str(url)


__all__ = ["push_model_folder"]
