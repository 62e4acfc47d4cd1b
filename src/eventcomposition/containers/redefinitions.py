"""A dependency-injector workaround: subclasses' redefinitions reach inherited providers.

dependency-injector keeps a subclass's inherited providers pointing at the base's
originals, so a subclass that redefines ``consumers`` would not change what the
inherited ``node`` registers; and a provider declared in a subclass that refers to
an ancestor's provider (``EventRuntimeContainer.transactional_consumer`` in a
grandchild) would use that ancestor's own graph (its settings, its stores).
``use_redefinitions`` rewires a container class when it is created
(``EventRuntimeContainer.__init_subclass__`` calls it); its tests are in
tests/unit/containers/test_inheritance.py and tests/integration/test_containers.py.
"""

from typing import Any

from dependency_injector import containers, providers


def use_redefinitions(container: type[containers.DeclarativeContainer]) -> None:
    """Make ``container``'s providers, and every ancestor's, resolve to its own.

    Every provider of the class is copied in one pass (so copies refer to copies),
    together with every ancestor's provider of the same name that differs from the
    class's (a base's original, a redefined one). The copy of each such ancestor
    provider is overridden by the class's copy: whatever refers to
    ``Ancestor.name``, at any depth, gets this class's ``name``, and overrides made
    later on an instance still reach the node.
    """
    current = dict(container.providers)
    shadows: dict[str, tuple[str, providers.Provider[Any]]] = {}
    for ancestor in container.__mro__[1:]:
        declared = getattr(ancestor, "providers", None)
        if not isinstance(declared, dict):
            continue
        for name, provider in declared.items():
            if name in current and provider is not current[name]:
                shadows.setdefault(f"{id(provider)} {name}", (name, provider))
    originals: dict[str, providers.Provider[Any]] = {
        **{key: provider for key, (_, provider) in shadows.items()},
        **current,
    }
    copies = providers.deepcopy(originals)
    for key, (name, _) in shadows.items():
        copies[key].override(copies[name])
    for name in current:
        setattr(container, name, copies[name])
