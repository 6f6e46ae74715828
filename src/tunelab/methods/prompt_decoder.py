"""Prompt scoring for decoder models (`AutoModelForCausalLM`): label log-likelihood.

The prompt is the task description, the demonstrations and the input: each example rendered by
the input template, each answer by the label template; through the tokenizer's chat template (one
user/assistant turn per demonstration) or as plain text. For the verbalizer words W_c of label c,

    ℓ(w | x) = (1/|w|) · Σ_t log p(w_t | prompt(x), w_<t)      (without 1/|w| if `length_normalise` is off)
    s_c(x)   = logsumexp_{w ∈ W_c} ℓ(w | x)

logsumexp rather than max: the label is the event "the model answers with one of its words",
whose probability is the sum of the words'; max drops the mass a model spreads over synonyms.
(SmolLM2-135M on Rotten Tomatoes, four words a label, 16 prompts: logsumexp was never below max,
and up to 16 points above it.)

Calibration divides the label probabilities p(c | x) = softmax_c s_c(x) by a label prior p̄ measured
under the same prompt, so a label's blanket advantage (the prompt's, the demonstrations') drops out:

    log p(c | x) − log p̄(c)

Two priors are tried (`calibration`):
- `content_free` (Zhao et al. 2021, "Calibrate Before Use", https://arxiv.org/abs/2102.09690): p̄ is
  the mean of p(· | x) over the content-free inputs "N/A", "" and "[MASK]" (their W = diag(p̄)⁻¹, b = 0).
- `inputs` (Zhou et al. 2024, "Batch Calibration", https://arxiv.org/abs/2309.17249): p̄ is the mean of
  p(· | x) over 256 unlabelled training inputs. A content-free string is not a typical input: on Rotten
  Tomatoes (configs/sentiment/smollm2_prompt.yaml) SmolLM2-135M's best uncalibrated prompt reached test
  accuracy 0.797; the search's pick calibrated on `inputs`, 0.820. Content-free calibration ranked lower.

Cost: each prompt runs once. The prompts' shared beginning runs once per set of inputs (halves the
CPU time of a zero-shot chat prompt; far more with shared demonstrations), and a word of several
tokens continues from the prompt's key/value cache (2.6× less CPU time than a row of prompt + word
per word, with four such words).
"""
from __future__ import annotations

import copy
import itertools
import random
from typing import Any

import numpy as np
import torch

from ..data import Example
from ..errors import ConfigError
from ..training.precision import autocast
from .prompt_demos import Demonstrations
from .prompt_search import CALIBRATION_INPUTS

# One generic built-in each: every template × label template × shot count is a pass over the search examples,
# and a task's own wording ("Review: {text}", "Sentiment: {label}") does better than any generic one.
DEFAULT_TEMPLATES = ["{text}"]
DEFAULT_LABEL_TEMPLATES = ["Answer: {label}"]
DEFAULT_SHOTS = [0, 1]  # every demonstration lengthens every prompt; small decoders also gain little from many
CONTENT_FREE = ["N/A", "", "[MASK]"]


class LikelihoodScorer:
    """Scores labels by the log-likelihood of their verbalizer words after the prompt."""

    default_shots = DEFAULT_SHOTS

    def __init__(self, model, tokenizer, options, max_length: int, batch_size: int, precision: str = "fp32"):
        self.model, self.tokenizer, self.options = model.eval(), tokenizer, options
        self.max_length, self.batch_size, self.precision = max_length, batch_size, precision
        self._cache: dict[tuple[str, str], np.ndarray] = {}  # (prompt, gap) → log-likelihood of every word
        self._truncated: dict[str, str] = {}
        self._word_tokens: dict[str, list[list[int]]] = {}
        self.chat = self._use_chat()
        self.demos = Demonstrations([], [], options, **self._demo_kwargs())  # drawn in `setup`

    def _use_chat(self) -> bool:
        has = bool(getattr(self.tokenizer, "chat_template", None))
        if self.options.chat_template == "on" and not has:
            raise ConfigError("`method.chat_template` is on, but this model's tokenizer has no chat template; "
                              "set it to auto or off")
        return has if self.options.chat_template == "auto" else self.options.chat_template == "on"

    # -- what the shared method asks of a back-end ---------------------------------------------
    def setup(self, train: list[Example], labels: list[str], options) -> None:
        """Draw the demonstration pool and the calibration inputs from the training split (seeded)."""
        self.labels, self.options = labels, options
        self.demos = Demonstrations.draw(train, labels, options, **self._demo_kwargs())
        # Unlabelled inputs for `inputs` calibration: never the validation or test split.
        rng = random.Random(f"{options.seed}-calibration")
        self.calibration_texts = rng.sample([e.text for e in train], min(CALIBRATION_INPUTS, len(train)))
        self._word_tokens = {}
        self._index_words()

    def candidates(self) -> list[dict[str, Any]]:
        """The fields of every candidate, in the order ties are broken (built-ins first)."""
        o = self.options
        templates = list(dict.fromkeys(DEFAULT_TEMPLATES + o.templates))
        label_templates = list(dict.fromkeys(DEFAULT_LABEL_TEMPLATES + o.label_templates))
        verbalizers = (["words"] if o.verbalizers else []) + ["label"]  # the user's words first: they chose them
        # Verbalizers and calibration vary fastest: zero-shot, they reuse the same forward passes (the cache below).
        calibrations = [dict(calibrate=False)] * (False in o.calibrate) + [
            dict(calibrate=True, calibration=kind) for kind in dict.fromkeys(o.calibration) if True in o.calibrate]
        return [dict(template=t, label_template=lt, shots=k, verbalizer=v, **cal)
                for t, lt, k, v, cal in itertools.product(templates, label_templates, sorted(set(o.shots)),
                                                          verbalizers, calibrations)]

    def raw_scores(self, c, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)))
        if self.demos.per_input(c.shots):
            self.demos.prefetch(texts)
        prompts = [self.render(c, t) for t in texts]
        gap = _split_label_template(c.label_template)[1]
        ll = self._logliks(prompts, gap)  # summed over each word's tokens
        if self.options.length_normalise:
            ll = ll / np.array([len(ids) for ids in self._word_ids(gap)])
        return np.stack([_logsumexp(ll[:, [self.word_index[w] for w in words]]) for words in self._words_of(c)], 1)

    def bias(self, c) -> np.ndarray:
        # Runs saved before `calibration` existed calibrated content-free (their bias is saved, though).
        inputs = self.calibration_texts if c.calibration == "inputs" else CONTENT_FREE
        probs = _softmax(self.raw_scores(c, inputs))
        return np.log(probs.mean(0))

    @staticmethod
    def calibrated(raw: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return raw - _logsumexp(raw)[:, None] - bias  # log p(c | x) − log p_cf(c)

    def state(self, c) -> dict[str, Any]:
        per_input = self.demos.per_input(c.shots)
        fixed = None if per_input else [list(d) for d in self.demos.choose(c.shots, "")]
        return {"chat_template_used": self.chat, "demonstrations": fixed,
                "demonstration_pool": [list(d) for d in self.demos.pool] if per_input else None,
                "prompt_example": self.render(c, "{text}")}

    def restore(self, state: dict[str, Any], labels: list[str], options) -> None:
        self.labels, self.options = labels, options
        self.chat = self._use_chat()
        pool = [tuple(d) for d in state.get("demonstration_pool") or []]
        fixed = state.get("demonstrations")
        fixed = {} if fixed is None else {state["chosen"]["shots"]: [tuple(d) for d in fixed]}
        self.demos = Demonstrations(pool, labels, options, fixed=fixed, **self._demo_kwargs())
        self._word_tokens = {}
        self._index_words()

    def _demo_kwargs(self) -> dict[str, Any]:
        return {"embed_self": self.embed, "max_length": self.max_length, "batch_size": self.batch_size}

    # -- prompts ----------------------------------------------------------------------------------
    def render(self, c, text: str) -> str:
        """The prompt for `text`, up to where the label's words begin."""
        o = self.options
        head, _, before, after = _split_label_template(c.label_template)

        def example(t: str) -> str:
            return c.template.replace("{description}", o.description).replace("{text}", self._truncate(t))

        words = dict(zip(self.labels, self._words_of(c)))

        def answer(label: str) -> str:  # demonstrations answer with the first of the words that are scored
            return before + words[label][0] + after

        demos = self.demos.choose(c.shots, text)
        intro = o.description if o.description and "{description}" not in c.template else ""
        if self.chat:
            messages = []
            for t, label in demos:
                messages += [{"role": "user", "content": example(t)}, {"role": "assistant", "content": answer(label)}]
            messages.append({"role": "user", "content": example(text)})
            if intro:  # in the first user turn: not every chat template accepts a system role
                messages[0]["content"] = f"{intro}\n\n{messages[0]['content']}"
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + head
        parts = ([intro] if intro else []) + [f"{example(t)}\n{answer(label)}" for t, label in demos]
        return "\n\n".join(parts + [f"{example(text)}\n{head}"])

    def _truncate(self, text: str) -> str:
        if text not in self._truncated:
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            short = len(ids) <= self.max_length  # keep the text as written unless it must be cut
            self._truncated[text] = text if short else self.tokenizer.decode(ids[:self.max_length])
        return self._truncated[text]

    def _words_of(self, c) -> list[list[str]]:
        """Each label's words under candidate `c`."""
        if c.verbalizer == "words":
            return [self.options.verbalizers.get(label) or [label] for label in self.labels]
        return [[label] for label in self.labels]

    def _index_words(self) -> None:
        """Every word any candidate scores: one forward pass scores them all."""
        names = [[label] for label in self.labels]
        configured = [self.options.verbalizers.get(label) or [label] for label in self.labels]
        self.words = list(dict.fromkeys(w for words in names + configured for w in words))
        self.word_index = {w: i for i, w in enumerate(self.words)}

    # -- the model ------------------------------------------------------------------------------
    def _logliks(self, prompts: list[str], gap: str) -> np.ndarray:
        todo = [p for p in dict.fromkeys(prompts) if (p, gap) not in self._cache]
        if todo:
            self._forward(todo, gap)
        return np.stack([self._cache[(p, gap)] for p in prompts])

    def _word_ids(self, gap: str) -> list[list[int]]:
        if gap not in self._word_tokens:
            self._word_tokens[gap] = [self.tokenizer(gap + w, add_special_tokens=False).input_ids for w in self.words]
            empty = [w for w, ids in zip(self.words, self._word_tokens[gap]) if not ids]
            if empty:
                raise ConfigError(f"`method.verbalizers`: the word {empty[0]!r} has no tokens")
        return self._word_tokens[gap]

    @torch.no_grad()
    def _forward(self, prompts: list[str], gap: str) -> None:
        """Word log-likelihoods for each prompt, each computed once.

        The prompts' common token prefix (chat header, description, shared demonstrations) runs once and
        its key/value cache serves every batch. A batch of prompts then runs once: where it ends, the
        model's next-token distribution scores every word's first token. Words of several tokens continue
        from the batch's own cache with their remaining tokens only.
        """
        words = self._word_ids(gap)
        # Plain text begins with BOS where the tokenizer adds one, as in training; chat templates write their own.
        bos = [] if self.chat else self.tokenizer("a").input_ids[:1]
        bos = bos if bos and bos[0] == self.tokenizer.bos_token_id else []
        ids = [bos + self.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        shared = min(_common_prefix(ids), min(map(len, ids)) - 1)  # every row keeps a token to predict from
        prefix = self._run([ids[0][:shared]], None)[1] if shared else None
        longer = [j for j, w in enumerate(words) if len(w) > 1]
        order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            logp, cache, mask = self._run([ids[i][shared:] for i in batch], prefix)
            scores = logp[:, -1, [w[0] for w in words]]
            if longer:
                scores[:, longer] += self._rest_of_words(cache, mask, [words[j] for j in longer])
            for b, i in enumerate(batch):
                self._cache[(prompts[i], gap)] = scores[b]

    def _run(self, rows: list[list[int]], prefix):
        """Next-token log-probabilities after each of the left-padded `rows` (which follow the cached `prefix`);
        also the rows' cache and attention mask, for words that continue."""
        dev = self.model.device
        n = max(map(len, rows))
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([[pad] * (n - len(r)) + r for r in rows], device=dev)
        mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows], device=dev)
        past = prefix.get_seq_length() if prefix is not None else 0
        positions = (past + mask.cumsum(1) - 1).clamp(min=0)  # padding in front must not shift the positions
        kwargs = {}
        if prefix is not None:
            cache = copy.deepcopy(prefix)  # the forward pass appends to the cache it is given
            cache.batch_repeat_interleave(len(rows))
            mask = torch.cat([torch.ones(len(rows), past, dtype=mask.dtype, device=dev), mask], 1)
            kwargs["past_key_values"] = cache
        with autocast(self.precision, dev):
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **kwargs)
        return torch.log_softmax(out.logits.float(), -1).cpu().numpy(), out.past_key_values, mask

    def _rest_of_words(self, cache, mask: torch.Tensor, words: list[list[int]]) -> np.ndarray:
        """Σ_{t≥1} log p(w_t | prompt, w_<t) for each row and word: one pass over the words' tokens but the
        last, each row's cache repeated once per word (row b, word j at b·k + j)."""
        dev, k, rows = self.model.device, len(words), mask.shape[0]
        n = max(map(len, words)) - 1
        pad = self.tokenizer.pad_token_id or 0
        inputs = torch.tensor([w[:-1] + [pad] * (n + 1 - len(w)) for w in words] * rows, device=dev)
        extra = torch.tensor([[1] * (len(w) - 1) + [0] * (n + 1 - len(w)) for w in words] * rows, device=dev)
        cache.batch_repeat_interleave(k)
        positions = mask.sum(1, keepdim=True).repeat_interleave(k, 0) + torch.arange(n, device=dev)
        with autocast(self.precision, dev):
            logits = self.model(input_ids=inputs, attention_mask=torch.cat([mask.repeat_interleave(k, 0), extra], 1),
                                position_ids=positions, past_key_values=cache, use_cache=True,
                                logits_to_keep=n).logits
        logp = torch.log_softmax(logits.float(), -1).view(rows, k, n, -1)
        out = np.zeros((rows, k))
        for j, w in enumerate(words):
            targets = torch.tensor(w[1:], device=dev)
            out[:, j] = logp[:, j, torch.arange(len(w) - 1, device=dev), targets].sum(-1).cpu().numpy()
        return out

    # -- embeddings, for `nearest` and `similar_last` with `embedder: self` ---------------------------
    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled last hidden states of the decoder itself, unit length (`embedder: self`)."""
        out, pad = [], self.tokenizer.pad_token_id or 0
        for start in range(0, len(texts), self.batch_size):
            rows = [self.tokenizer(t, add_special_tokens=False).input_ids[:self.max_length] or [pad]
                    for t in texts[start:start + self.batch_size]]
            n = max(map(len, rows))
            ids = torch.tensor([r + [0] * (n - len(r)) for r in rows], device=self.model.device)
            mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows], device=self.model.device)
            with autocast(self.precision, self.model.device):
                hidden = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                                    logits_to_keep=1).hidden_states[-1].float()
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1))


def _split_label_template(label_template: str) -> tuple[str, str, str, str]:
    """(prompt end, gap, demonstration prefix, suffix): "Answer: {label}." → ("Answer:", " ", "Answer: ", ".").

    The whitespace before {label} belongs to the scored word: BPE vocabularies spell " positive" as one
    token, so a prompt that ends in a space would make the model predict an unusual token.
    """
    before, _, after = label_template.partition("{label}")
    head = before.rstrip()
    return head, before[len(head):], before, after


def _common_prefix(rows: list[list[int]]) -> int:
    first, n = rows[0], min(map(len, rows))
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return n


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
