"""Catch-up after a broker outage, on the real RabbitMQ and S3 server: events published
while an actor is cut off never reach it (its event queue dies with its connection), so
after reconnecting it asks the store which model to serve and loads it. Each outage here
changes what should be served while the actor cannot hear about it: a new model, a
rollback that holds an older one, the end of that hold."""

from __future__ import annotations

from services.actor.service import ActorService
from services.trainer.export import export_onnx
from services.trainer.network import PolicyValueNet
from shared.games import get_game
from shared.model_store import ServingPointer, open_model_store
from tests.faults.proxy import TcpProxy
from tests.helpers import running, wait_until

ENV = "tictactoe"
GAME = get_game(ENV)


async def test_an_actor_serves_the_right_model_after_reconnecting(make_config):
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    config = make_config(
        mcts={"num_simulations": 4}, actor={"actor_id": "catching-up", "parallel_games": 4},
        broker={"url": f"amqp://guest:guest@{proxy.address}/", "connect_attempts": 3})
    actor = ActorService(config)
    model = export_onnx(PolicyValueNet(GAME.obs_shape, GAME.num_actions, blocks=1, channels=8))
    try:
        async with open_model_store(config.storage) as store:
            for version in (1, 2):
                await store.put_model(ENV, version, model, step=version)
            async with running(actor) as tasks:
                # Ready: subscribed to events, playing the newest model.
                await wait_until(actor.ready.is_set, "the actor to start", tasks=tasks)
                assert actor.model_version == 2

                async def outage(change) -> None:
                    """Cut the broker, change what should be served, bring it back."""
                    reconnects = actor.reloader.catch_ups
                    await proxy.cut()
                    await change()
                    await proxy.restore()
                    await wait_until(lambda: actor.reloader.catch_ups > reconnects, "the actor to reconnect",
                                     tasks=tasks)

                # A model published while the actor was cut off.
                await outage(lambda: store.put_model(ENV, 3, model, step=3))
                assert actor.model_version == 3 and not actor.reloader.holding

                # A rollback decided meanwhile (the evaluator's pointer), and a newer model.
                async def roll_back() -> None:
                    await store.put_serving(ENV, ServingPointer(version=1, hold=True, reason="test rollback"))
                    await store.put_model(ENV, 4, model, step=4)
                await outage(roll_back)
                assert actor.model_version == 1 and actor.reloader.holding

                # The hold ended meanwhile: the newest again.
                await outage(lambda: store.put_serving(ENV, ServingPointer(version=4, hold=False)))
                assert actor.model_version == 4 and not actor.reloader.holding
                assert actor.reloader.failures == []
    finally:
        await proxy.close()
