"""
Talk to a policy: a multi-turn chat in which each turn's thinking is shown but dropped from the next turn's context.

    python chat.py --ckpt runs/tiny/chat/ckpt.pt                                   # interactive
    python chat.py --ckpt runs/tiny/chat/ckpt.pt --script convs.jsonl --out out.jsonl

Interactive: type a problem (`7+38*2-15`, `3 7 25 19 -> 63`); the model thinks (printed in reading order, marked
`thinking |`), then answers, and the exact checker says whether the answer is right. From the second turn `ans` is
the previous answer, as on a calculator (`ans*3-7`). Commands: /context prints the exact context the model will read
before the next question, /reset starts a new conversation, /quit (or Ctrl-D) ends. A line the conversation cannot
take (`ans` before any answer, a character the model does not know, an empty line, a problem too long for the context)
gets one line saying why, and the conversation goes on as it was.

Script mode: each line of --script is a JSON object {"turns": ["7+38*2-15", "ans*3", "ans-100"]}; each output line
keeps every input field and adds, one entry per turn, "answers" (the reply, or null), "contexts" (the exact text the
model read before it wrote the turn: <s> and </s> spelled out), "context_tokens" (their lengths), "correct" (the
checker's verdict) and "errors" (null, or why the turn was not asked: the turn is then left out of the conversation,
as in interactive mode).

The format, the carried KV cache and why the thinking is dropped: nano_reasoner/chat.py. The policy must have been
fine-tuned for conversation (train_pretrain.py --init ... --chat; the pipeline's chat stage).
"""
import argparse
import json
import math

from nano_reasoner import chat, tasks
from nano_reasoner.cli import UserError, check_output_file, load_policy, read_jsonl, pick_device, run_main


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a policy fine-tuned for chat, e.g. runs/tiny/chat/ckpt.pt")
    parser.add_argument("--script", help="JSONL file of conversations, one {\"turns\": [...]} per line")
    parser.add_argument("--out", help="JSONL file to write the results to (with --script)")
    # decoding
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default 0)")
    parser.add_argument("--max-new-tokens", type=int, default=400, help="tokens a turn may write at most (default 400)")
    parser.add_argument("--keep-thinking", action="store_true",
                        help="carry every turn's thinking into later contexts (what the model was not trained on: "
                        "for comparison only)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = parser.parse_args()
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        raise UserError(f"--temperature {args.temperature}: give a number >= 0 (0 = greedy)")
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if args.out and not args.script:
        raise UserError("--out goes with --script")
    if args.script and not args.out:
        raise UserError("--script needs --out: the file to write the answers to")
    if args.out:
        check_output_file(args.out, args.script, "--script")
    return args


def read_script(path):
    """-> input records; a line that is not {"turns": [strings]} is a UserError naming the line."""
    records = []
    for number, record in read_jsonl(path, "script", '{"turns": ["7+38*2-15", "ans*3"]}'):
        turns = record.get("turns") if isinstance(record, dict) else None
        if not isinstance(turns, list) or not turns or not all(isinstance(turn, str) for turn in turns):
            raise UserError(f"{path}:{number}: \"turns\" must be a non-empty list of strings, such as "
                            f"[\"7+38*2-15\", \"ans*3\"]")
        records.append(record)
    if not records:
        raise UserError(f"{path} holds no conversations")
    return records


def show_turn(turn):
    lines = turn.completion.split("\n")
    end = lines.index(tasks.END_THINK) if tasks.END_THINK in lines else len(lines)
    for line in lines[:end]:
        print(f"  thinking | {tasks.flip_digits(line)}")
    print(f"answer: {turn.reply or '(none)'}")
    print(f"  check: {'right' if turn.verdict.is_correct else 'wrong, ' + turn.verdict.reason} | context "
          f"{turn.context_tokens} tokens, {turn.prefilled_tokens} prefilled, "
          f"{turn.context_tokens - turn.prefilled_tokens} from the cache", flush=True)


def interactive(conversation, ckpt_path):
    print(f"chat with {ckpt_path}. Type a problem (7+38*2-15, or 3 7 25 19 -> 63); `ans` is the previous answer. "
          f"Commands: /context, /reset, /quit.", flush=True)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            break
        command = line.strip()
        if command == "/quit":
            break
        if command == "/reset":
            conversation.reset()
            print("(a new conversation)", flush=True)
            continue
        if command == "/context":
            ids = conversation.context_ids()
            print(f"context ({len(ids)} tokens; the next question follows it):")
            print(chat.context_text(conversation.tokenizer, ids), flush=True)
            continue
        if command.startswith("/"):
            print(f"unknown command {command}: use /context, /reset or /quit", flush=True)
            continue
        try:
            show_turn(conversation.ask(line))
        except chat.ChatError as error:
            print(f"error: {error}", flush=True)
    print(f"(prefilled {conversation.prefill_tokens} tokens over the turns; re-encoding every context would have "
          f"prefilled {conversation.reencode_tokens})")


def run_script(conversation, records, out_path):
    rows, right, asked = [], 0, 0
    for index, record in enumerate(records, 1):
        conversation.reset()
        row = dict(record, answers=[], contexts=[], context_tokens=[], correct=[], errors=[])
        for line in record["turns"]:
            try:
                question = conversation.parse(line)
                context = conversation.context_ids(question)
                turn = conversation.ask(line)
            except chat.ChatError as error:
                for key in ("answers", "contexts", "context_tokens", "correct"):
                    row[key].append(None)
                row["errors"].append(str(error))
                continue
            row["answers"].append(turn.reply if turn.reply else None)
            row["contexts"].append(chat.context_text(conversation.tokenizer, context))
            row["context_tokens"].append(len(context))
            row["correct"].append(turn.verdict.is_correct)
            row["errors"].append(None)
            right += turn.verdict.is_correct
            asked += 1
        rows.append(row)
        print(f"conversation {index}/{len(records)}: " + " | ".join(
            f"{answer}" if error is None else f"error: {error}" for answer, error in zip(row["answers"], row["errors"])),
            flush=True)
    with open(out_path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"{right}/{asked} turns right; wrote {out_path}")


def main():
    args = parse_args()
    records = read_script(args.script) if args.script else None
    device = pick_device(args.device, args.threads)
    model, tokenizer, _ = load_policy(args.ckpt, device)
    if not chat.has_chat_tokens(tokenizer):
        raise UserError(f"{args.ckpt} was not fine-tuned for conversation (its tokenizer has no <user> and <assistant> "
                        f"tokens): pass runs/tiny/chat/ckpt.pt, or make one with train_pretrain.py --init CKPT --chat")
    conversation = chat.Conversation(model, tokenizer, max_new_tokens=args.max_new_tokens,
                                     temperature=args.temperature, seed=args.seed, keep_thinking=args.keep_thinking)
    if records is None:
        interactive(conversation, args.ckpt)
    else:
        run_script(conversation, records, args.out)


if __name__ == "__main__":
    run_main(main)
