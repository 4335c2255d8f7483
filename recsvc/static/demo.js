/**
 * The demo page: every scenario call with its player and a live panel of what happened.
 *
 * Theory of operation. Nothing about the scenarios is written here: the list,
 * the explanations and the drills come from GET /demo/scenarios (mounted by
 * `python -m recsvc demo`). The tokens come from the address fragment
 * (`/#token=<business token>&admin=<admin token>`), which never reaches the
 * server's logs.
 *
 * Per call the page mounts the real player (/player.js, `mountPlayer`) with a
 * `fetchImpl` wrapper that records each answer to the recording URL (status,
 * Retry-After, the JSON `attempt` and `error`), so the "answers" panel is
 * exactly what the player heard. Every second it reads the call's jobs
 * (GET /admin/jobs), its retry counter (GET /admin/retry-counters) and its
 * current URL (GET /api/calls), and /readyz for the pool's health.
 */

const $ = (selector) => document.querySelector(selector);
const REFRESH_MS = 1000;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clock(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleTimeString([], {hour12: false});
}

function fragmentParams() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  return {token: params.get("token") || "", admin: params.get("admin") || ""};
}

const {token, admin} = fragmentParams();

async function api(method, path, bearer) {
  const response = await fetch(path, {method, headers: {Authorization: `Bearer ${bearer}`}, cache: "no-store"});
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  return {status: response.status, body};
}

async function loadPlayerModule() {
  try {
    return await import("/player.js");
  } catch (err) {
    console.warn("demo: /player.js could not be loaded", err);
    return null;
  }
}

// ---------------------------------------------------------------- one scenario card

class ScenarioCard {
  constructor(scenario, businessId, playerModule) {
    this.scenario = scenario;
    this.businessId = businessId;
    this.playerModule = playerModule;
    this.player = null;
    this.generation = 0;       // answers from an earlier player are not logged
    this.startedMs = 0;
    this.build();
  }

  build() {
    const s = this.scenario;
    this.stateBadge = el("span", {class: "state", "data-state": "idle"}, "idle");
    this.playerBox = el("div", {class: "player", id: `player-${s.key}`});
    this.answers = el("ol", {class: "answers", "aria-label": "Answers the player received"});
    this.jobs = el("tbody");
    this.counter = el("p", {class: "counter"}, "—");
    this.hidden = el("p", {class: "hidden-jobs"});
    this.node = el("section", {class: "scenario", id: `scenario-${s.key}`, "data-call-sid": s.call_sid},
      el("div", {class: "about"},
        el("h2", {}, s.title, " ", el("code", {}, s.call_sid)),
        el("p", {class: "expect"}, "Expect: ", el("strong", {}, s.expect)),
        el("p", {class: "contract"}, s.contract),
        el("p", {class: "explain"}, s.explain),
        el("div", {class: "buttons"},
          el("button", {type: "button", onclick: () => this.startPlayer()}, "Play again"),
          el("button", {type: "button", onclick: () => this.reset()}, "Reset call"),
          el("button", {type: "button", onclick: () => this.askOnce()}, "Ask once")),
        el("p", {}, "Player: ", this.stateBadge),
        this.playerBox),
      el("div", {class: "panel"},
        el("h3", {}, "Answers over time"), this.answers,
        el("h3", {}, "Retry counter"), this.counter,
        el("h3", {}, "Jobs (newest first)"),
        el("table", {class: "jobs"},
          el("thead", {}, el("tr", {},
            ["id", "attempt", "status", "created", "started", "finished", "error"].map((h) => el("th", {}, h)))),
          this.jobs),
        this.hidden));
  }

  /** fetch, plus a line in the answers panel for every answer to the recording URL. */
  loggingFetch(generation) {
    return async (input, init) => {
      const askedMs = performance.now();
      const response = await fetch(input, init);
      const url = typeof input === "string" ? input : input.url;
      if (url.includes("/api/recordings/file/") && generation === this.generation) {
        this.logAnswer(response, "player", performance.now() - askedMs);
      }
      return response;
    };
  }

  async logAnswer(response, how = "player", tookMs = 0) {
    const at = ((performance.now() - this.startedMs) / 1000).toFixed(1);
    const item = el("li", {"data-status": response.status},
      el("span", {class: "at"}, `+${at}s`), " ",
      el("span", {class: `status s${String(response.status)[0]}xx`}, response.status));
    const retryAfter = response.headers.get("Retry-After");
    if (retryAfter) item.append(` Retry-After ${retryAfter}`);
    // CONTRACT 5b: a request the server held with Prefer: wait says so.
    if (response.headers.get("Preference-Applied") && tookMs > 300) {
      item.append(` held ${(tookMs / 1000).toFixed(1)}s`);
    }
    if (how !== "player") item.append(` (${how})`);
    this.answers.append(item);
    if ((response.headers.get("Content-Type") || "").includes("json")) {
      try {
        const body = await response.clone().json();
        if (body.attempt !== undefined) item.append(` attempt ${body.attempt}/${body.max_attempts}`);
        if (body.error) item.append(" ", el("code", {}, body.error));
        if (body.reason) item.append(` (${body.reason})`);
      } catch { /* the player may have cancelled the body */ }
    }
  }

  setState(snapshot) {
    const name = snapshot?.state ?? String(snapshot);
    this.stateBadge.textContent = name;
    this.stateBadge.dataset.state = name;
  }

  startPlayer() {
    if (this.player) this.player.stop();
    this.generation += 1;
    this.startedMs = performance.now();
    this.answers.replaceChildren();
    this.playerBox.replaceChildren();
    this.playerBox.removeAttribute("data-state");
    if (!this.playerModule) {
      this.setState("no player");
      this.playerBox.append(el("p", {class: "missing"},
        "/player.js is not available here; use “Ask once” to see the answers."));
      return;
    }
    this.setState("waiting");
    this.player = this.playerModule.mountPlayer(this.playerBox, {
      callSid: this.scenario.call_sid,
      token,
      lang: "en",
      fetchImpl: this.loggingFetch(this.generation),
      onState: (snapshot) => this.setState(snapshot),
    });
  }

  /** One request, outside the player: what the server answers right now (it has the same effects). */
  async askOnce() {
    if (!this.startedMs) this.startedMs = performance.now();
    const response = await fetch(`/api/recordings/file/${encodeURIComponent(this.scenario.call_sid)}`,
      {headers: {Authorization: `Bearer ${token}`}, cache: "no-store"});
    return this.logAnswer(response, "asked once");
  }

  async reset() {
    const answer = await api("POST", `/demo/calls/${encodeURIComponent(this.scenario.call_sid)}/reset`, admin);
    drillLog(`Reset ${this.scenario.call_sid}`, answer);
    this.startPlayer();
  }

  async refresh() {
    const sid = encodeURIComponent(this.scenario.call_sid);
    const [jobs, counter, call] = await Promise.all([
      api("GET", `/admin/jobs?call_sid=${sid}&business_id=${this.businessId}`, admin),
      api("GET", `/admin/retry-counters/${this.businessId}/${sid}`, admin),
      api("GET", `/api/calls/${sid}`, token),
    ]);
    if (counter.status === 200) {
      const c = counter.body;
      this.counter.replaceChildren(c.ttl === -2
        ? `no key (${c.key}): the next retry counts from 1`
        : `${c.key}: attempts ${c.attempts}, TTL ${c.ttl} s`);
    }
    if (jobs.status !== 200) return;
    // CONTRACT 1: a job belongs to the URL it fetches; earlier URLs no longer count.
    const currentUrl = call.status === 200 ? call.body.recording_url : undefined;
    const current = jobs.body.jobs.filter((job) => currentUrl === undefined || job.recording_url === currentUrl);
    const earlier = jobs.body.jobs.length - current.length;
    this.jobs.replaceChildren(...current.map((job) => el("tr", {"data-status": job.status},
      el("td", {}, job.id), el("td", {}, job.attempt),
      el("td", {}, el("span", {class: `job-${job.status}`}, job.status)),
      el("td", {}, clock(job.created_at)), el("td", {}, clock(job.started_at)),
      el("td", {}, clock(job.finished_at)),
      el("td", {}, job.error_code ? el("code", {}, job.error_code) : "", job.error_message ? ` ${job.error_message}` : ""))));
    if (!current.length) this.jobs.append(el("tr", {}, el("td", {colspan: 7}, "no job for the current URL yet")));
    this.hidden.textContent = earlier ? `${earlier} earlier job(s) of older URLs not shown.` : "";
  }
}

// ---------------------------------------------------------------- drills and health

function drillLog(what, answer) {
  const line = el("li", {}, `${new Date().toLocaleTimeString([], {hour12: false})} ${what}: `,
    el("span", {class: `status s${String(answer.status)[0]}xx`}, answer.status), " ",
    el("code", {}, JSON.stringify(answer.body)));
  $("#drill-log").prepend(line);
  while ($("#drill-log").children.length > 8) $("#drill-log").lastElementChild.remove();
}

function renderDrills(drills) {
  $("#drills").replaceChildren(el("h2", {}, "Drills"), el("div", {class: "drill-list"},
    drills.map((drill) => el("div", {class: "drill", id: `drill-${drill.key}`},
      el("button", {type: "button", onclick: async () => {
        drillLog(drill.label, await api(drill.method, drill.path, admin));
        refreshHealth();
      }}, drill.label),
      el("p", {class: "contract"}, drill.contract),
      el("p", {class: "explain"}, drill.explain)))));
}

let upstreamHangs = false;

async function refreshHealth() {
  const [ready, scenarios] = await Promise.all([
    api("GET", "/readyz", admin),
    api("GET", "/demo/scenarios", admin),
  ]);
  if (scenarios.status === 200) upstreamHangs = scenarios.body.upstream_hangs;
  const workers = ready.status === 200 ? "workers: live" : `workers: ${ready.body?.reason ?? "not ready"}`;
  const health = $("#health");
  health.textContent = `${workers} · upstream: ${upstreamHangs ? "hangs" : "answers"}`;
  health.dataset.ready = String(ready.status === 200);
}

function renderSettings(values) {
  $("#settings").textContent = "Timings: " + Object.entries(values)
    .map(([name, value]) => `${name.replaceAll("_", "-")} ${value}`).join(", ");
}

// ---------------------------------------------------------------- start

async function main() {
  const notice = $("#notice");
  if (!token || !admin) {
    notice.textContent = "No tokens in the address. Start `python -m recsvc demo` and open the URL it prints " +
      "(it ends in #token=…&admin=…).";
    return;
  }
  const found = await api("GET", "/demo/scenarios", admin);
  if (found.status !== 200) {
    notice.textContent = found.status === 404
      ? "This server does not run the demo. Start `python -m recsvc demo` and open the URL it prints."
      : `The demo routes answered ${found.status}: is the admin token in the address right?`;
    return;
  }
  const {business_id: businessId, scenarios, drills, settings} = found.body;
  renderSettings(settings);
  renderDrills(drills);
  const playerModule = await loadPlayerModule();
  const cards = scenarios.map((scenario) => new ScenarioCard(scenario, businessId, playerModule));
  $("#scenarios").replaceChildren(...cards.map((card) => card.node));
  for (const card of cards) card.startPlayer();

  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try {
      await Promise.all([refreshHealth(), ...cards.map((card) => card.refresh())]);
    } catch (err) {
      $("#health").textContent = `refresh failed: ${err}`;
    } finally {
      busy = false;
    }
  };
  tick();
  setInterval(tick, REFRESH_MS);
}

main();
