"""A run's console a person can read: no shutdown noise from actors, no Ray Data progress output
in front of a stage's own lines."""
import glob
import os

from tests.servers import wait_for_exit

SHUTDOWN_NOISE = "Task was destroyed but it is pending"


def test_an_hf_actor_that_ends_without_close_prints_no_pending_task(local_ray, tiny_llama):
    """Ray Data ends a pool's actors when its stage is done and nothing calls the generator's
    close(): every hf actor printed SHUTDOWN_NOISE for its batcher task as its process exited
    (seen in each EvalActor's log), and Ray forwards that to the driver's console; an actor that
    had scored an equality check printed it for its scoring task too (every evolve actor)."""
    ray = local_ray

    @ray.remote(num_cpus=0)
    class Answerer:
        def __init__(self, model: str):
            from generation import GenerationConfig, build_generator

            self.generator = build_generator(GenerationConfig(model=model, dtype="float32", torch_threads=1,
                                                              batch_size=2, batch_wait_ms=1))

        async def answer(self, prompt: str) -> tuple[int, int]:
            from generation import SamplingParams

            answer = await self.generator.generate(prompt, SamplingParams(0.0, 1.0, 2))
            choice = await self.generator.choose(prompt, ["Equal", "Not Equal"], SamplingParams(0.0, 1.0, 16))
            assert choice.text in ("Equal", "Not Equal")
            return os.getpid(), answer.completion_tokens

    actor = Answerer.remote(tiny_llama)
    pid, tokens = ray.get(actor.answer.remote("question"))
    assert tokens > 0
    actor.__ray_terminate__.remote()  # a graceful end, as Ray Data ends its pool's actors
    logs = ray._private.worker._global_node.get_logs_dir_path()
    wait_for_exit([pid])
    [err] = glob.glob(os.path.join(logs, f"worker-*-{pid}.err"))
    assert SHUTDOWN_NOISE not in open(err).read()
