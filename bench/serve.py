#!/usr/bin/env python3
"""Benchmarks of `infllm serve` (standard library only).

  bench/serve.py ttft   [--tokens 32768]   first request on a long document vs a follow-up
  bench/serve.py clients                   tokens/s summed with 1, 2 and 4 clients at once
  bench/serve.py memory [--tokens 8192]    peak RSS with 8 conversations, --cache-ram 1024
  bench/serve.py load                      200 requests from 8 clients, 10% malformed

Each starts its own server (target/release/infllm serve, SmolLM2, -t 2) on a
free port and prints one line per figure.
"""

import argparse
import json
import random
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

BIN = "target/release/infllm"
MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
SENTENCES = [
    "The river bends past the old mill before it reaches the town.",
    "Every morning the baker opens the shop at six and sells bread until noon.",
    "A train leaves the northern station twice a day, carrying wood and letters.",
    "The library keeps maps of the valley drawn by hand two centuries ago.",
    "In winter the lake freezes and children skate between the reeds.",
    "The council meets on Thursdays to argue about the price of grain.",
    "Far up the hill a shepherd counts his sheep as the sun goes down.",
    "The clock on the church tower has been five minutes late for years.",
]


class Server:
    def __init__(self, *flags):
        cmd = [BIN, "serve", "-m", MODEL, "--port", "0", "-t", "2", "--temp", "0", "--timeout", "7200", *flags]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        while True:
            try:
                urllib.request.urlopen(self.url + "/health")
                return
            except (urllib.error.HTTPError, urllib.error.URLError):
                time.sleep(0.1)

    def post(self, path, body, raw=None):
        data = raw if raw is not None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=3600) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def chat(self, messages, max_tokens=16):
        status, r = self.post("/v1/chat/completions", {"messages": messages, "max_tokens": max_tokens})
        assert status == 200, r
        return r

    def rss_mib(self, field="VmRSS"):
        """Resident memory now (VmRSS) or at its peak (VmHWM)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(field + r":\s+(\d+)", f.read()).group(1)) / 1024

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def document(tokens, seed=0):
    """About `tokens` tokens of varied text (~13 tokens a sentence)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(SENTENCES) for _ in range(tokens // 13))


def ttft(a):
    s = Server()
    doc = document(a.tokens)
    first = [{"role": "user", "content": doc + "\n\nWhat does the baker sell?"}]
    t = time.time()
    r1 = s.chat(first, 8)
    t1 = time.time() - t
    follow = first + [{"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
                      {"role": "user", "content": "When does the train leave?"}]
    t = time.time()
    r2 = s.chat(follow, 1)
    t2 = time.time() - t
    print(f"document {r1['usage']['prompt_tokens']} tokens: first request {t1:.2f} s "
          f"(prompt {r1['timings']['prompt_ms'] / 1e3:.2f} s)")
    print(f"follow-up, first token: {t2 * 1e3:.0f} ms ({r2['timings']['prompt_n']} tokens read, "
          f"{r2['usage']['prompt_tokens_details']['cached_tokens']} cached); ratio {t1 / t2:.0f}x")
    s.stop()


def clients(a):
    for n in (1, 2, 4):
        s = Server("-np", str(n))
        done = []

        def one(i):
            r = s.chat([{"role": "user", "content": f"Tell me a long story about the number {i}."}], 64)
            done.append(r["usage"]["completion_tokens"])

        t = time.time()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        [th.start() for th in threads]
        [th.join() for th in threads]
        dt = time.time() - t
        print(f"{n} client(s): {sum(done)} tokens in {dt:.2f} s = {sum(done) / dt:.1f} t/s summed")
        s.stop()


def memory(a):
    s = Server("--cache-ram", "1024")
    for i in range(8):
        s.chat([{"role": "user", "content": document(a.tokens, seed=i) + "\n\nSummarize."}], 4)
    m = urllib.request.urlopen(s.url + "/metrics").read().decode()
    pick = lambda name: re.search(rf"^{name} (\S+)", m, re.M).group(1)
    print(f"8 conversations of ~{a.tokens} tokens: peak RSS {s.rss_mib('VmHWM'):.0f} MiB, "
          f"in RAM {pick('infllm:conversations_in_ram')}, on disk {pick('infllm:conversations_on_disk')}")
    s.stop()


def load(a):
    s = Server("-np", "2")
    rss0 = s.rss_mib()
    ok, refused, wrong = 0, 0, []
    lock = threading.Lock()

    def client(c):
        nonlocal ok, refused
        for i in range(25):
            bad = (c * 25 + i) % 10 == 0
            body = {"messages": [{"role": "user", "content": f"Question {c}-{i}: name a color."}],
                    "max_tokens": 12, "stream": i % 2 == 0}
            if bad:
                status, _ = s.post("/v1/chat/completions", None, raw=b'{"messages": [')
            else:
                req = urllib.request.Request(s.url + "/v1/chat/completions", data=json.dumps(body).encode())
                with urllib.request.urlopen(req, timeout=600) as r:
                    status = r.status
                    r.read()
            with lock:
                if bad and status == 400:
                    refused += 1
                elif not bad and status == 200:
                    ok += 1
                else:
                    wrong.append((bad, status))

    t = time.time()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    print(f"200 requests from 8 clients in {time.time() - t:.1f} s: {ok} answered, {refused} malformed refused, "
          f"{len(wrong)} wrong {wrong[:5]}; server alive: {s.proc.poll() is None}; "
          f"RSS {rss0:.0f} MiB before, {s.rss_mib():.0f} MiB after, peak {s.rss_mib('VmHWM'):.0f} MiB")
    s.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["ttft", "clients", "memory", "load"])
    p.add_argument("--tokens", type=int, default=None)
    a = p.parse_args()
    a.tokens = a.tokens or {"ttft": 32768, "memory": 8192}.get(a.what, 0)
    {"ttft": ttft, "clients": clients, "memory": memory, "load": load}[a.what](a)


if __name__ == "__main__":
    sys.exit(main())
