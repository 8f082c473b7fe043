"""`mmfuser_llava`, an lmms-eval chat model: the task's messages through the processor's chat template, generated in
left-padded batches by the project's own `answer_conversations` (the code the demo and the experiment use).

Multi-process as lmms-eval's own Transformers models: `accelerate launch --num_processes N -m lmms_eval ...` puts one
copy of the model on each process's device and lmms-eval gives each process its share of the requests.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator, DistributedType
from lmms_eval import utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from PIL import Image
from tqdm import tqdm

from ...demo import answer_conversations, load_for_inference

# lmms-eval's own default when a task does not bound its answers (llava_hf, llava).
DEFAULT_MAX_NEW_TOKENS = 1024


class MMFuserLlava(lmms):
    """MMFuser-LLaVA (any Hub repo or folder written by this project) in lmms-eval.

    `max_new_tokens`, when given, replaces the tasks' own bound; `dtype` is a torch dtype name or "auto" (default:
    float16 on CUDA, float32 elsewhere). The batch size comes from lmms-eval's `--batch_size`.
    """

    is_simple = False

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        dtype: str | None = None,
        attn_implementation: str | None = None,
        load_in_4bit: bool = False,
        load_in_8bit: bool = False,
        batch_size: int | str = 1,
        max_new_tokens: int | None = None,
        **unknown,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"mmfuser_llava does not know the model_args {sorted(unknown)}")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"mmfuser_llava needs a whole batch size of at least 1, got {batch_size!r}")
        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            if accelerator.distributed_type not in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
                raise ValueError(f"mmfuser_llava runs data-parallel only, not {accelerator.distributed_type}")
            device = str(accelerator.device)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model, self.processor = load_for_inference(
            pretrained,
            device=device,
            dtype=None if dtype is None else dtype if dtype == "auto" else getattr(torch, dtype),
            load_in_4bit=load_in_4bit,
            load_in_8bit=load_in_8bit,
            attn_implementation=attn_implementation,
        )
        self.accelerator = accelerator
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes
        self.batch_size_per_process = int(batch_size)
        self.max_new_tokens = max_new_tokens

    @property
    def model(self):
        return self._model

    @property
    def device(self) -> torch.device:
        """Where lmms-eval puts the tensors it gathers across processes."""
        return self._model.device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_process

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers in request order, batched by equal generation settings (lmms-eval's `Collator`, as its own
        models do); each answer is cut at the first of the task's `until` strings."""
        # Arguments of a chat request: context, doc_to_messages, generation kwargs, doc id, task, split.
        batches = utils.Collator([request.args for request in requests], lambda args: args[3], lambda args: args[2],
                                 grouping=True)
        answers = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="mmfuser_llava answering")
        for batch in batches.get_batched(n=self.batch_size, batch_fn=None):
            contexts, doc_to_messages, all_generation_kwargs, doc_ids, tasks, splits = zip(*batch)
            conversations, images = [], []
            for to_messages, doc_id, task, split in zip(doc_to_messages, doc_ids, tasks, splits):
                messages = ChatMessages(messages=to_messages(self.task_dict[task][split][doc_id]))
                conversation_images, videos, audios = messages.extract_media()
                if videos or audios:
                    raise ValueError(f"mmfuser_llava reads images and text only; task {task} sends video or audio")
                conversations.append(messages.to_hf_messages())
                images += [_rgb(image) for image in conversation_images]
            generation_kwargs, stops = self._generation_arguments(all_generation_kwargs[0])
            for context, answer in zip(contexts, answer_conversations(
                self.model, self.processor, conversations, images, **generation_kwargs
            )):
                answer = _cut_at_stops(answer, stops)
                answers.append(answer)
                self.cache_hook.add_partial("generate_until", (context, all_generation_kwargs[0]), answer)
            progress.update(len(batch))
        progress.close()
        return batches.get_original(answers)

    def _generation_arguments(self, task_kwargs: dict) -> tuple[dict, list[str]]:
        """`generate` arguments from a task's `generation_kwargs` (greedy unless it asks for a temperature), and its
        stop strings."""
        stops = task_kwargs.get("until") or []
        arguments = {
            "max_new_tokens": self.max_new_tokens or task_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS,
            "num_beams": task_kwargs.get("num_beams") or 1,
        }
        if (task_kwargs.get("temperature") or 0) > 0:
            arguments.update(do_sample=True, temperature=task_kwargs["temperature"], top_p=task_kwargs.get("top_p"))
        return arguments, [stops] if isinstance(stops, str) else list(stops)

    def loglikelihood(self, requests):
        raise NotImplementedError("mmfuser_llava generates answers; the paper's benchmarks in lmms-eval need no more")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("mmfuser_llava answers single-round tasks")


def _rgb(image: Image.Image | str) -> Image.Image:
    """A task's picture (a PIL image or an image file's path) in RGB, as the processor expects."""
    if isinstance(image, str):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image.convert("RGB")


def _cut_at_stops(text: str, stops: list[str]) -> str:
    for stop in stops:
        if stop:
            text = text.split(stop, 1)[0]
    return text
