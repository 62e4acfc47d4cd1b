"""``eventcomposition dead-letters retry``: the events parked by transactional
consumers, delivered again to their group's processor, which the application's
container declares."""

import argparse
from collections.abc import Sequence

from ..consumers import TransactionalConsumer, retry_dead_letters
from ..containers import application_consumers
from ..projections import VersionedConsumer
from ..runtime import Registration, SubscriptionConsumerRegistration
from ..settings import load_settings
from .errors import CommandError
from .options import configure_logging_from


async def retry_parked(args: argparse.Namespace) -> int:
    settings = load_settings(args.env, settings_dir=args.settings_dir)
    configure_logging_from(settings)
    async with application_consumers(args.app, settings) as registrations:
        consumers = transactional_consumers(registrations, args.group)
        consumers.update(await versioned_consumers(registrations, args.group))
        if not consumers:
            raise CommandError(
                f"the app {args.app} declares no transactional consumer"
                + (f" of group '{args.group}'" if args.group else "")
                + ": pass the --app whose consumers process these dead letters"
            )
        failed = 0
        for group, consumer in consumers.items():
            result = await retry_dead_letters(
                checkpoint_store=consumer.checkpoint_store,
                event_reader=consumer.event_reader,
                group=group,
                processor=consumer.processor,
            )
            print(
                f"{group}: applied {len(result.applied)}, "
                f"still parked {len(result.failed)}"
            )
            for letter, why in result.failed:
                print(
                    f"  {letter.source} sequence_number={letter.sequence_number}: {why}"
                )
            failed += len(result.failed)
        return 1 if failed else 0


async def versioned_consumers(
    registrations: Sequence[Registration], group: str | None
) -> dict[str, TransactionalConsumer]:
    """Consumers of the versions of the versioned projections, by checkpoint group
    (``group`` for version 1, ``group@vN`` after)."""
    found: dict[str, TransactionalConsumer] = {}
    for registration in registrations:
        if not isinstance(registration, SubscriptionConsumerRegistration):
            continue
        consumer = registration.consumer
        if not isinstance(consumer, VersionedConsumer):
            continue
        for checkpoint_group, version in (await consumer.version_consumers()).items():
            if group in (None, checkpoint_group):
                found.setdefault(checkpoint_group, version)
    return found


def transactional_consumers(
    registrations: Sequence[Registration], group: str | None
) -> dict[str, TransactionalConsumer]:
    found: dict[str, TransactionalConsumer] = {}
    for registration in registrations:
        if not isinstance(registration, SubscriptionConsumerRegistration):
            continue
        consumer = registration.consumer
        if isinstance(consumer, TransactionalConsumer) and group in (
            None,
            consumer.group,
        ):
            found.setdefault(consumer.group, consumer)
    return found
