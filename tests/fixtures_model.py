import pytest
import torch

from sae_lens_maira.processing.tokenizer import build_maira2_tokenizer
from tests.model.reference import build_reference, save_hub_checkpoint, tiny_maira2_dict

REPORTS = [
    "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
    "Cardiomegaly. Small bilateral pleural effusions. Right internal jugular central venous catheter.",
    "Left-sided pacemaker with leads in the right atrium and ventricle. No focal consolidation.",
    "Stable mild enlargement of the cardiac silhouette. Blunting of the left costophrenic angle.",
]


@pytest.fixture(scope="session")
def tokenizer():
    return build_maira2_tokenizer(REPORTS * 20, vocab_size=420)


@pytest.fixture(scope="session")
def tiny_cfg(tokenizer):
    return tiny_maira2_dict(len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))


@pytest.fixture(scope="session")
def reference(tiny_cfg):
    torch.set_grad_enabled(True)
    return build_reference(tiny_cfg, seed=0)


@pytest.fixture(scope="session")
def hub_checkpoint(tmp_path_factory, reference, tiny_cfg, tokenizer):
    return save_hub_checkpoint(
        reference, tiny_cfg, tokenizer, tmp_path_factory.mktemp("maira2_hub")
    )
