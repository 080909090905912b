"""
The tokenizer: SentencePiece trained on generated traces, with the trace format's markers as single tokens.

A language model reads integers, not text. SentencePiece (Kudo & Richardson, arXiv 1808.06226) learns a vocabulary
of pieces from a corpus; here a byte-pair-encoding model (Sennrich et al., arXiv 1508.07909) trained on a few
thousand generated traces. Three choices make it fit arithmetic:

- digits are split (`split_digits`): `1026` is always `1 0 2 6`, so the model sees every number digit by digit and
  the same digit always has the same token, which makes carrying learnable (multi-digit pieces like `102` would not be);
- the markers `<think>`, `</think>`, the newline that ends each step and the word `undo` that starts a line going
  back (tasks/trace.py) are user-defined symbols, always one token, so the sampler can stop at "end of step" by
  watching a single token id, and budget forcing can continue the thinking with one token;
- no normalisation and no dummy prefix, so decode(encode(text)) == text for every trace (tested). There is no byte
  fallback (it would add 256 byte pieces to a vocabulary of about 60): a character the corpus never held encodes to
  `unk`, and `encode_checked` refuses such text with a message instead of silently changing it.

Special ids: pad 0, bos 1, eos 2, unk 3. A sequence for the model is [bos] + encode(prompt + completion) + [eos].
The trained `.model` file's bytes are stored inside every checkpoint, so a checkpoint carries its own tokenizer.

Adding tokens after training (`add_symbols`). A chat model needs markers that pre-training never saw (`<user>`,
`<assistant>`, chat.py); production chat templates add theirs when the base model is fine-tuned, and the embedding
matrix grows by as many rows (model.grow_vocab). SentencePiece stores its model as a protocol buffer whose first
field is the repeated list of pieces, and a protocol buffer may repeat a field anywhere in the message: bytes that
encode one more piece, appended at the end, are read as the next entry of that list. So a new user-defined symbol is
a dozen bytes added to the `.model` file: its id is the old vocabulary size, every old piece keeps its id, and
every text without the new symbols encodes exactly as before (tested).
"""
import hashlib
import os
import struct
import tempfile

import sentencepiece as spm

from nano_reasoner.tasks import END_THINK, THINK, UNDO

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
STEP_END = "\n"


class Tokenizer:
    def __init__(self, model_bytes):
        self.model_bytes = bytes(model_bytes)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id, self.bos_id, self.eos_id = PAD_ID, BOS_ID, EOS_ID
        self.step_end_id = self.sp.piece_to_id(STEP_END)
        self.think_id = self.sp.piece_to_id(THINK)
        self.end_think_id = self.sp.piece_to_id(END_THINK)
        self.piece_set = {self.sp.id_to_piece(i) for i in range(self.vocab_size)}
        self.sha256 = hashlib.sha256(self.model_bytes).hexdigest()

    @classmethod
    def from_file(cls, path):
        with open(path, "rb") as f:
            return cls(f.read())

    def encode(self, text):
        return self.sp.encode(text)

    def decode(self, ids):
        """Token ids -> text; pad, bos and eos are dropped."""
        return self.sp.decode([i for i in ids if i not in (PAD_ID, BOS_ID, EOS_ID)])

    def encode_checked(self, text):
        """encode, or ValueError when the text holds characters the tokenizer cannot represent."""
        ids = self.encode(text)
        if UNK_ID in ids:
            unknown = sorted({ch for ch in text if self.sp.piece_to_id(ch) == UNK_ID and ch != " "})
            raise ValueError(f"characters the tokenizer does not know: {''.join(unknown)!r}")
        return ids

    def encode_prompt(self, prompt):
        return [BOS_ID] + self.encode_checked(prompt)

    def symbol_id(self, symbol):
        """The id of a one-token symbol, or None when the vocabulary does not hold it."""
        return self.sp.piece_to_id(symbol) if symbol in self.piece_set else None


def _varint(n):
    """A protocol-buffer varint: 7 bits per byte, low bits first, the top bit set on every byte but the last."""
    out = bytearray()
    while True:
        low7, n = n & 0x7F, n >> 7
        out.append(low7 | (0x80 if n else 0))
        if not n:
            return bytes(out)


def add_symbols(model_bytes, symbols):
    """A SentencePiece model's bytes with `symbols` appended as user-defined pieces (module docstring): the new ids
    are vocab_size, vocab_size + 1, ... in order. A symbol the model already holds is refused."""
    existing = Tokenizer(model_bytes)
    added = bytearray()
    for symbol in symbols:
        if symbol in existing.piece_set:
            raise ValueError(f"the tokenizer already holds {symbol!r}")
        text = symbol.encode("utf-8")
        # message SentencePiece { string piece = 1; float score = 2; Type type = 3; }, USER_DEFINED = 4; each field is
        # a key byte (field number << 3 | wire type: 2 length-delimited, 5 fixed 32-bit, 0 varint), then its value
        piece = b"\x0a" + _varint(len(text)) + text + b"\x15" + struct.pack("<f", 0.0) + b"\x18" + _varint(4)
        added += b"\x0a" + _varint(len(piece)) + piece  # field 1 of ModelProto: one more entry of `pieces`
    return bytes(model_bytes) + bytes(added)


def train_tokenizer(texts, path, vocab_size=64):
    """Train a BPE SentencePiece model on `texts` and write it atomically to `path`; returns a Tokenizer."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as workdir:
        corpus = os.path.join(workdir, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            # SentencePiece reads its corpus one line at a time, so each line of a trace is one sentence; the newline
            # itself is a user-defined symbol, which is in the vocabulary whatever the corpus holds
            for text in texts:
                f.write(text + "\n")
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(workdir, "sp"), model_type="bpe", vocab_size=vocab_size,
            user_defined_symbols=[THINK, END_THINK, STEP_END, UNDO], split_digits=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID, hard_vocab_limit=False,
            character_coverage=1.0, num_threads=1, minloglevel=2,
        )
        with open(os.path.join(workdir, "sp.model"), "rb") as f:
            model_bytes = f.read()
    tmp_path = path + ".tmp"
    with open(tmp_path, "wb") as f:
        f.write(model_bytes)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_path, path)
    return Tokenizer(model_bytes)
