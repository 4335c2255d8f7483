"""nginx as a reference: the same 1 MiB file and a fixed 202, on a free loopback port.

Started only when nginx is installed, in the foreground (``daemon off``) as
a child of the bench with its own prefix folder, and stopped by its pid.
One worker process unless told otherwise (``bench --nginx-workers``). Access logs are
written (buffered), as recsvc writes its access lines.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Nginx:
    def __init__(self, workdir: str, root: str, body_202: bytes, workers: int = 1):
        self.prefix = os.path.join(workdir, "nginx")
        os.makedirs(os.path.join(self.prefix, "logs"), exist_ok=True)
        self.port = _free_port()
        body = body_202.decode().replace("\\", "\\\\").replace("'", "\\'")
        conf = os.path.join(self.prefix, "nginx.conf")
        with open(conf, "w") as out:
            # A root master would run its worker as nobody, who cannot read recsvc's 0640 files.
            user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
            out.write(f"""
{user}
worker_processes {workers};
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {self.prefix}/logs/access.log combined buffer=64k flush=1s;
    client_body_temp_path {self.prefix}/body;
    proxy_temp_path {self.prefix}/proxy;
    fastcgi_temp_path {self.prefix}/fastcgi;
    uwsgi_temp_path {self.prefix}/uwsgi;
    scgi_temp_path {self.prefix}/scgi;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 60s;
    keepalive_requests 1000000;
    types {{ audio/wav wav; }}
    server {{
        listen {HOST}:{self.port};
        root {root};
        location = /poll {{
            default_type application/json;
            add_header Retry-After 2 always;
            return 202 '{body}';
        }}
    }}
}}
""")
        version = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
        self.version = (version.stderr or version.stdout).strip().removeprefix("nginx version: ")
        self.proc = subprocess.Popen(["nginx", "-p", self.prefix, "-c", conf, "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("nginx did not start listening")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: the master ends its worker
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
