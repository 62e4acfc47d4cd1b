"""A dependency-injector workaround: subclasses' redefinitions reach inherited providers.

dependency-injector keeps a subclass's inherited providers pointing at the base's
originals, so a subclass that redefines ``consumers`` would not change what the
inherited ``node`` registers. ``use_redefinitions`` rewires a container class when
it is created (``EventRuntimeContainer.__init_subclass__`` calls it); its tests are
in tests/unit/containers/test_redefinitions.py.
"""

from typing import Any

from dependency_injector import containers, providers


def use_redefinitions(container: type[containers.DeclarativeContainer]) -> None:
    """Make the inherited providers of ``container`` use the ones it redefines.

    Every provider of the subclass is copied in one pass (so copies refer to
    copies), and the copy of each redefined base provider is overridden by the
    subclass's: overrides made later on an instance still reach the node.
    """
    redefined = [
        name
        for name in container.cls_providers
        if name in container.inherited_providers
    ]
    originals: dict[str, providers.Provider[Any]] = {
        **{
            f"inherited {name}": container.inherited_providers[name]
            for name in redefined
        },
        **container.providers,
    }
    copies = providers.deepcopy(originals)
    for name in redefined:
        copies[f"inherited {name}"].override(copies[name])
    for name in container.providers:
        setattr(container, name, copies[name])
