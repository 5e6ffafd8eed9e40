"""What ``gen-train --help`` lists beyond Hydra's template variables (conf/hydra/help/):
the config groups a user chooses from, without the internal ``schema/*`` ones, and the
trainer settings with what each does. Both are OmegaConf resolvers the template calls."""

from __future__ import annotations

import dataclasses

from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from genlr.options import options_of
from genlr.spec import TrainerConfig

FIRST = ("task", "model", "optimizer", "lr", "trainer", "experiment")
INTERNAL = ("hydra", "schema", "workload/sizes")  # size= picks workload/sizes


def groups() -> str:
    """``  group: option, option, ...`` for every config group of the search path (the
    user's --config-dir included), gen-train's own first."""
    loader = GlobalHydra.instance().config_loader()

    def walk(parent: str) -> list[str]:
        found = []
        for name in loader.list_groups(parent):
            group = f"{parent}/{name}" if parent else name
            if group in INTERNAL:
                continue
            if loader.get_group_options(group):
                found.append(group)
            found += walk(group)
        return found

    ordered = sorted(walk(""), key=lambda g: (FIRST.index(g) if g in FIRST else len(FIRST), g))
    return "\n".join(f"  {g}: {', '.join(loader.get_group_options(g))}" for g in ordered)


def trainer_settings() -> str:
    """``  key (default): choices, what it does`` for every field of TrainerConfig."""
    lines = []
    for field, option in zip(dataclasses.fields(TrainerConfig), options_of(TrainerConfig)):
        choices = " | ".join(option.choices) + " " if option.choices else ""
        lines.append(f"  {field.name} ({'null' if option.default is None else option.default}): "
                     f"{choices}{field.metadata.get('help', '')}".rstrip(": "))
    return "\n".join(lines)


def register_resolvers() -> None:
    for name, function in (("gen_train_groups", groups), ("gen_train_trainer", trainer_settings)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
