"""The site's Flower ClientApp: prepare surrogates, train and evaluate on them, return weights.

Only model arrays and scalar metrics leave the site; images, plaintext or
surrogate, never do. Message types:

- ``query.describe``: which site this SuperNode is (or that it is simulated);
- ``query.prepare``: build (or reuse) the site's surrogates; report class names,
  channels, image counts and the surrogates' quality figures (SSIM, PSNR). A simulated
  site meanwhile leaves its progress in ``$FESF_HOME/progress/<run-id>/<site>.json``
  for the ServerApp (:mod:`fesf_fed.progress`);
- ``train`` / ``evaluate``: local training and evaluation of the global model; an
  evaluation also returns its confusion matrices of the test and the validation images
  (counts only: the server picks the best round's model by the latter). With DP-SGD a
  training reply also carries the epsilon the site has spent so far in the run, from the
  accountant it keeps in ``$FESF_HOME/privacy/<run>/<site>.json`` (:mod:`fesf_fed.dp_sgd`);
  with ``dp-aggregate = "client-fixed"`` Flower's ``fixedclipping_mod`` clips its update.
"""

import zlib

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod

from fesf_fed import dp_sgd
from fesf_fed.config import SiteConfig
from fesf_fed.device import select_device
from fesf_fed.errors import FesfError
from fesf_fed.federation import protocol
from fesf_fed.federation.protocol import DataDescription
from fesf_fed.federation.settings import RunSettings, parse_run_settings
from fesf_fed.models import build_model
from fesf_fed.task import Evaluation, evaluate, train
from fesf_fed.training_data import SiteData

from .site import describe_node, progress_file, site_config_for, site_data

app = ClientApp()

#: What a reply's content holds by record name.
Record = ArrayRecord | MetricRecord | ConfigRecord


def _site_reply(message: Message, site: str, **records: Record) -> Message:
    """A site's reply to ``message``: ``records`` and the site's name (record ``site``)."""
    return Message(RecordDict({**records, protocol.SITE: ConfigRecord(protocol.site_record(site))}), reply_to=message)


def _site(message: Message, context: Context, report: bool = False) -> tuple[RunSettings, SiteConfig, SiteData]:
    """The run's settings and the addressed site's config and data; ``report`` its preparation's progress.

    Only the prepare handler reports: in a simulation another handler may run in another
    process, load the data there again and must not write progress after preparation ended.
    """
    settings, site_defaults = parse_run_settings(context.run_config)
    config = site_config_for(protocol.config_of(message.content), context.node_config, settings, site_defaults)
    reporter = progress_file(context.node_config, message.metadata.run_id, config.site) if report else None
    try:
        return settings, config, site_data(config, settings.mode, reporter)
    except FesfError as exc:
        raise FesfError(f"site {config.site}: {exc}") from None


def _global_model(message: Message, settings: RunSettings, data: SiteData) -> torch.nn.Module:
    model = build_model(settings.model, len(data.classes), data.channels, image_size=int(data.train_images.shape[-1]))
    model.load_state_dict(message.content.array_records[protocol.ARRAYS].to_torch_state_dict())
    return model


@app.query(protocol.DESCRIBE_ACTION)
def describe(message: Message, context: Context) -> Message:
    """Roll call: name this node's site, or say that it simulates sites."""
    node = ConfigRecord(describe_node(context.node_config).to_config())
    return Message(RecordDict({protocol.NODE: node}), reply_to=message)


@app.query(protocol.PREPARE_ACTION)
def prepare(message: Message, context: Context) -> Message:
    """First contact with a site: build or reuse its surrogates and describe them."""
    _, config, data = _site(message, context, report=True)
    description = DataDescription(tuple(data.classes), data.channels, int(data.train_images.shape[-1]), data.hosts)
    counts = {
        protocol.TRAIN_EXAMPLES: len(data.train_labels),
        protocol.VAL_EXAMPLES: len(data.val_labels),
        protocol.TEST_EXAMPLES: len(data.test_labels),
    }
    metrics = MetricRecord({**counts, **data.quality})
    records: dict[str, Record] = {protocol.DATA: ConfigRecord(description.to_config()), protocol.METRICS: metrics}
    return _site_reply(message, config.site, **records)


def clip_when_asked(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod`` for a train message that carries a clipping norm, else nothing.

    Flower's client-side DP wrapper (``dp-aggregate = "client-fixed"``) sends the norm, and only it:
    the mod clips the site's update to it before the reply leaves.
    """
    if protocol.CLIPPING_NORM in protocol.config_of(message.content):
        return fixedclipping_mod(message, context, call_next)
    return call_next(message, context)


#: The train handler's mods (``server.simulation`` registers the handler with them too).
TRAIN_MODS: list[Mod] = [clip_when_asked]


@app.train(mods=TRAIN_MODS)
def train_round(message: Message, context: Context) -> Message:
    """Train the global model on the site's training images for the configured local epochs, as the run's recipe says."""
    settings, config, data = _site(message, context)
    model = _global_model(message, settings, data)
    server_config = protocol.config_of(message.content)
    server_round = int(server_config.get(protocol.SERVER_ROUND, 0))
    recipe = settings.recipe()
    # DP-SGD's accountant stays at the site from round to round, and across a resumption of the run.
    ledger = dp_sgd.accountant_path(settings.run_folder(str(message.metadata.run_id)), config.site)
    accountant = None
    if recipe.dp_sgd:
        # A new run starts afresh, over whatever a deleted run of the same name left behind.
        fresh = server_round == 1 and not settings.resume
        accountant = dp_sgd.new_accountant() if fresh else dp_sgd.read_accountant(ledger)
    # The learning-rate schedule spans the whole run: this round's epochs are a stretch of it.
    first_epoch, total_epochs = settings.epoch_position(server_round)
    loss = train(
        model,
        data.train_images,
        data.train_labels,
        epochs=settings.local_epochs,
        lr=settings.learning_rate,
        batch_size=settings.batch_size,
        device=select_device(config.device),
        # A different shuffle per site and round, reproducible from the run's seed.
        seed=zlib.crc32(f"{settings.seed}/{config.site}/{server_round}".encode()),
        proximal_mu=float(server_config.get(protocol.PROXIMAL_MU, 0.0)),
        recipe=recipe,
        first_epoch=first_epoch,
        total_epochs=total_epochs,
        accountant=accountant,
    )
    metrics = MetricRecord({protocol.NUM_EXAMPLES: len(data.train_labels), protocol.TRAIN_LOSS: loss})
    if accountant is not None:
        dp_sgd.write_accountant(accountant, ledger)  # before the weights leave: they spent it
        metrics[protocol.DP_SGD_EPSILON] = accountant.get_epsilon(recipe.dp_sgd_delta)
    records: dict[str, Record] = {protocol.ARRAYS: ArrayRecord(model.state_dict()), protocol.METRICS: metrics}
    return _site_reply(message, config.site, **records)


@app.evaluate()
def evaluate_round(message: Message, context: Context) -> Message:
    """Evaluate the global model on the site's test images, and count its answers on the validation images."""
    settings, config, data = _site(message, context)
    model = _global_model(message, settings, data)
    device = select_device(config.device)

    def evaluated(images: np.ndarray, labels: np.ndarray) -> Evaluation:
        return evaluate(
            model, images, labels, num_classes=len(data.classes), batch_size=settings.batch_size, device=device
        )

    result = evaluated(data.test_images, data.test_labels)
    scalars = result.scalars()
    metrics = MetricRecord({protocol.NUM_EXAMPLES: scalars.pop("examples"), **scalars})
    records: dict[str, Record] = {
        protocol.METRICS: metrics,
        protocol.CONFUSION: ConfigRecord(protocol.confusion_record(result.confusion)),
    }
    if len(data.val_labels):
        validation = evaluated(data.val_images, data.val_labels)
        records[protocol.VAL_CONFUSION] = ConfigRecord(protocol.confusion_record(validation.confusion))
    return _site_reply(message, config.site, **records)
