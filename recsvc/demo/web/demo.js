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
 *
 * Languages. The page speaks English or Hebrew (right to left), switched by
 * the two buttons on top and kept in the fragment (`&lang=he`) and in
 * localStorage. The page's own words are in `UI` below; the scenarios'
 * words come from the server in both languages. A player speaks the language
 * it was started in (Play again restarts it in the current one).
 *
 * The fail-fast moment. When a player hears a final 500
 * worker_not_processing_queue, a fixed banner at the top names the call, the
 * answer and the seconds it took (with the window the settings predict for
 * the hang scenario), and the answer itself is scrolled into view.
 */

const $ = (selector) => document.querySelector(selector);
const REFRESH_MS = 1000;
const LANG_KEY = "recsvc-demo-lang";

const UI = {
  en: {
    title: "recsvc demo: how a recording job fails and recovers",
    lead: "Every call below is a real request path through recsvc; only the upstream is fake. Each card shows " +
      "the player, the answers it received, the call's jobs and its retry counter, refreshed every second " +
      "from the admin API.",
    loading: "Loading the scenarios…",
    noTokens: "No tokens in the address. Start `python -m recsvc demo` and open the URL it prints " +
      "(it ends in #token=…&admin=…).",
    notDemo: "This server does not run the demo. Start `python -m recsvc demo` and open the URL it prints.",
    badAdmin: (status) => `The demo routes answered ${status}: is the admin token in the address right?`,
    drills: "Drills", expect: "Expect: ", player: "Player: ",
    playAgain: "Play again", reset: "Reset call", askOnce: "Ask once",
    answers: "Answers over time", counter: "Retry counter", jobs: "Jobs (newest first)",
    jobColumns: ["id", "attempt", "status", "created", "started", "finished", "error"],
    noJob: "no job for the current URL yet",
    earlier: (n) => `${n} earlier job(s) of older URLs not shown.`,
    noKey: (key) => `no key (${key}): the next retry counts from 1`,
    counterIs: (key, attempts, ttl) => `${key}: attempts ${attempts}, TTL ${ttl} s`,
    timings: "Timings: ", workersLive: "workers: live", workersNot: (reason) => `workers: ${reason}`,
    upstream: (hangs) => `upstream: ${hangs ? "hangs" : "answers"}`,
    held: (s) => ` held ${s}s`, askedOnce: "asked once", attempt: (a, m) => ` attempt ${a}/${m}`,
    noPlayer: "no player", missingPlayer: "/player.js is not available here; use “Ask once” to see the answers.",
    failFast: "Fail fast",
    failFastText: (title, sid, status, code, reason, seconds) =>
      `${title} (${sid}) answered ${status} ${code}${reason ? ` (${reason})` : ""} after ${seconds} s ` +
      "and its player stopped: a definite answer instead of waiting forever.",
    predicted: (min, max) => ` The settings predict ${min} to ${max} s.`,
    showAnswer: "Show the answer",
    states: {},   // the player's state names, as the walkthrough writes them
  },
  he: {
    title: "הדגמת recsvc: איך משימת הקלטה נכשלת ומתאוששת",
    lead: "כל שיחה למטה היא מסלול בקשה אמיתי דרך recsvc; רק המקור מזויף. כל כרטיס מציג את הנגן, את " +
      "התשובות שקיבל, את המשימות של השיחה ואת מונה הניסיונות החוזרים שלה, מתעדכנים בכל שנייה מה-API של המנהל.",
    loading: "טוען את התרחישים…",
    noTokens: "אין אסימונים בכתובת. הפעילו `python -m recsvc demo` ופתחו את הכתובת שהוא מדפיס " +
      "(היא מסתיימת ב-#token=…&admin=…).",
    notDemo: "השרת הזה אינו מריץ את ההדגמה. הפעילו `python -m recsvc demo` ופתחו את הכתובת שהוא מדפיס.",
    badAdmin: (status) => `נתיבי ההדגמה ענו ${status}: האם אסימון המנהל בכתובת נכון?`,
    drills: "תרגילים", expect: "צפוי: ", player: "נגן: ",
    playAgain: "נגן שוב", reset: "אפס שיחה", askOnce: "שאל פעם אחת",
    answers: "תשובות לאורך זמן", counter: "מונה ניסיונות חוזרים", jobs: "משימות (החדשה ראשונה)",
    jobColumns: ["מזהה", "ניסיון", "מצב", "נוצרה", "התחילה", "הסתיימה", "שגיאה"],
    noJob: "עדיין אין משימה לכתובת הנוכחית",
    earlier: (n) => `${n} משימות קודמות של כתובות ישנות אינן מוצגות.`,
    noKey: (key) => `אין מפתח (${key}): הניסיון החוזר הבא נספר מ-1`,
    counterIs: (key, attempts, ttl) => `${key}: ניסיונות ${attempts}, TTL ${ttl} שניות`,
    timings: "זמנים: ", workersLive: "עובדים: חיים", workersNot: (reason) => `עובדים: ${reason}`,
    upstream: (hangs) => `מקור: ${hangs ? "תקוע" : "עונה"}`,
    held: (s) => ` הוחזקה ${s} שניות`, askedOnce: "נשאל פעם אחת", attempt: (a, m) => ` ניסיון ${a}/${m}`,
    noPlayer: "אין נגן", missingPlayer: "‏/player.js אינו זמין כאן; השתמשו ב„שאל פעם אחת” כדי לראות את התשובות.",
    failFast: "כישלון מהיר",
    failFastText: (title, sid, status, code, reason, seconds) =>
      `${title} (${sid}) ענתה ${status} ${code}${reason ? ` (${reason})` : ""} אחרי ${seconds} שניות ` +
      "והנגן שלה עצר: תשובה ברורה במקום המתנה לנצח.",
    predicted: (min, max) => ` ההגדרות צופות ${min} עד ${max} שניות.`,
    showAnswer: "הצג את התשובה",
    states: {
      idle: "לא התחיל", waiting: "ממתין", playing: "מנגן", call_not_found: "השיחה לא נמצאה",
      not_found: "ההקלטה לא נמצאה", worker_offline: "העובד לא זמין", download_failed: "ההורדה נכשלה",
      server_error: "שגיאת שרת", error: "שגיאה", unavailable: "השרת אינו זמין", timeout: "תם הזמן",
    },
  },
};

function initialLang() {
  const fromAddress = new URLSearchParams(location.hash.replace(/^#/, "")).get("lang");
  let stored = null;
  try { stored = localStorage.getItem(LANG_KEY); } catch { /* storage may be off */ }
  const chosen = fromAddress || stored || "en";
  return chosen === "he" ? "he" : "en";
}

let lang = initialLang();
const t = (key) => UI[lang][key];

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
    this.text = {
      title: el("span"), expect: el("span"), expectValue: el("strong"), explain: el("p", {class: "explain"}),
      playAgain: el("button", {type: "button", onclick: () => this.startPlayer()}),
      reset: el("button", {type: "button", onclick: () => this.reset()}),
      askOnce: el("button", {type: "button", onclick: () => this.askOnce()}),
      player: el("span"), answers: el("h3"), counter: el("h3"), jobs: el("h3"), columns: el("tr"),
    };
    const x = this.text;
    this.node = el("section", {class: "scenario", id: `scenario-${s.key}`, "data-call-sid": s.call_sid},
      el("div", {class: "about"},
        el("h2", {}, x.title, " ", el("code", {}, s.call_sid)),
        el("p", {class: "expect"}, x.expect, x.expectValue),
        el("p", {class: "contract"}, s.contract),
        x.explain,
        el("div", {class: "buttons"}, x.playAgain, x.reset, x.askOnce),
        el("p", {}, x.player, this.stateBadge),
        this.playerBox),
      el("div", {class: "panel"},
        x.answers, this.answers,
        x.counter, this.counter,
        x.jobs,
        el("table", {class: "jobs"}, el("thead", {}, x.columns), this.jobs),
        this.hidden));
    this.renderTexts();
  }

  /** The card's words in the current language (the scenario's own come from the server in both). */
  renderTexts() {
    const words = lang === "he" && this.scenario.he ? this.scenario.he : this.scenario;
    const x = this.text;
    x.title.textContent = words.title;
    x.expect.textContent = t("expect");
    x.expectValue.textContent = words.expect;
    x.explain.textContent = words.explain;
    for (const key of ["playAgain", "reset", "askOnce", "player", "answers", "counter", "jobs"]) {
      x[key].textContent = t(key);
    }
    x.columns.replaceChildren(...t("jobColumns").map((h) => el("th", {}, h)));
    this.renderState();
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
    const seconds = (performance.now() - this.startedMs) / 1000;
    const at = seconds.toFixed(1);
    const item = el("li", {"data-status": response.status},
      el("span", {class: "at"}, `+${at}s`), " ",
      el("span", {class: `status s${String(response.status)[0]}xx`}, response.status));
    const retryAfter = response.headers.get("Retry-After");
    if (retryAfter) item.append(` Retry-After ${retryAfter}`);
    // CONTRACT 5b: a request the server held with Prefer: wait says so.
    if (response.headers.get("Preference-Applied") && tookMs > 300) {
      item.append(t("held")((tookMs / 1000).toFixed(1)));
    }
    if (how !== "player") item.append(` (${t("askedOnce")})`);
    this.answers.append(item);
    if ((response.headers.get("Content-Type") || "").includes("json")) {
      try {
        const body = await response.clone().json();
        if (body.attempt !== undefined) item.append(t("attempt")(body.attempt, body.max_attempts));
        if (body.error) item.append(" ", el("code", {}, body.error));
        if (body.reason) item.append(` (${body.reason})`);
        if (how === "player" && response.status === 500 && body.error === "worker_not_processing_queue") {
          showFailFast(this, item, body, at);
        }
      } catch { /* the player may have cancelled the body */ }
    }
  }

  setState(snapshot) {
    const name = snapshot?.state ?? String(snapshot);
    this.stateBadge.dataset.state = name;
    this.renderState();
  }

  /** The badge shows the player's state in the page's language; data-state keeps its name. */
  renderState() {
    const name = this.stateBadge.dataset.state;
    this.stateBadge.textContent = t("states")[name] ?? name;
  }

  startPlayer() {
    if (this.player) this.player.stop();
    this.generation += 1;
    this.startedMs = performance.now();
    this.answers.replaceChildren();
    this.playerBox.replaceChildren();
    this.playerBox.removeAttribute("data-state");
    if (!this.playerModule) {
      this.setState(t("noPlayer"));
      this.playerBox.append(el("p", {class: "missing"}, t("missingPlayer")));
      return;
    }
    this.setState("waiting");
    this.player = this.playerModule.mountPlayer(this.playerBox, {
      callSid: this.scenario.call_sid,
      token,
      lang,
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
      this.counter.replaceChildren(c.ttl === -2 ? t("noKey")(c.key) : t("counterIs")(c.key, c.attempts, c.ttl));
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
    if (!current.length) this.jobs.append(el("tr", {}, el("td", {colspan: 7}, t("noJob"))));
    this.hidden.textContent = earlier ? t("earlier")(earlier) : "";
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
  const words = (drill) => (lang === "he" && drill.he ? drill.he : drill);
  $("#drills").replaceChildren(el("h2", {}, t("drills")), el("div", {class: "drill-list"},
    drills.map((drill) => el("div", {class: "drill", id: `drill-${drill.key}`},
      el("button", {type: "button", onclick: async () => {
        drillLog(words(drill).label, await api(drill.method, drill.path, admin));
        refreshHealth();
      }}, words(drill).label),
      el("p", {class: "contract"}, drill.contract),
      el("p", {class: "explain"}, words(drill).explain)))));
}

// ---------------------------------------------------------------- the fail-fast moment

let failFastSettings = null;   // the settings, for the window the hang scenario predicts

function showFailFast(card, item, body, seconds) {
  const words = lang === "he" && card.scenario.he ? card.scenario.he : card.scenario;
  const banner = $("#failfast");
  let text = t("failFastText")(words.title, card.scenario.call_sid, 500, body.error, body.reason, seconds);
  if (card.scenario.key === "hang" && failFastSettings) {
    text += t("predicted")(failFastSettings.fail_fast_min, failFastSettings.fail_fast_max);
  }
  item.classList.add("fail-fast");
  banner.replaceChildren(
    el("strong", {}, t("failFast")), " ", el("span", {class: "what"}, text), " ",
    el("button", {type: "button", onclick: () => item.scrollIntoView({block: "center"})}, t("showAnswer")));
  banner.dataset.callSid = card.scenario.call_sid;
  banner.dataset.seconds = seconds;
  banner.hidden = false;
  document.body.classList.add("has-fail-fast");
  item.scrollIntoView({block: "center"});
}

// ---------------------------------------------------------------- languages

let cards = [];
let drillList = [];

function applyLanguage() {
  const root = document.documentElement;
  root.lang = lang;
  root.dir = lang === "he" ? "rtl" : "ltr";
  document.title = t("title");
  $("#lead").textContent = t("lead");
  for (const code of ["en", "he"]) {
    $(`#lang-${code}`).setAttribute("aria-pressed", String(code === lang));
  }
  if (drillList.length) renderDrills(drillList);
  for (const card of cards) card.renderTexts();
  if (failFastSettings) renderSettings(failFastSettings);
}

function switchLanguage(code) {
  lang = code === "he" ? "he" : "en";
  try { localStorage.setItem(LANG_KEY, lang); } catch { /* storage may be off */ }
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  params.set("lang", lang);
  history.replaceState(null, "", `#${params.toString()}`);
  applyLanguage();
}

let upstreamHangs = false;

async function refreshHealth() {
  const [ready, scenarios] = await Promise.all([
    api("GET", "/readyz", admin),
    api("GET", "/demo/scenarios", admin),
  ]);
  if (scenarios.status === 200) upstreamHangs = scenarios.body.upstream_hangs;
  const workers = ready.status === 200 ? t("workersLive") : t("workersNot")(ready.body?.reason ?? "not ready");
  const health = $("#health");
  health.textContent = `${workers} · ${t("upstream")(upstreamHangs)}`;
  health.dataset.ready = String(ready.status === 200);
}

function renderSettings(values) {
  // The label follows the page's direction; the list of flags is a left-to-right run of its own.
  const list = document.createElement("bdi");
  list.dir = "ltr";
  list.className = "settings-list";
  list.textContent = Object.entries(values).map(([name, value]) => `${name.replaceAll("_", "-")} ${value}`).join(", ");
  $("#settings").replaceChildren(t("timings"), list);
}

// ---------------------------------------------------------------- start

async function main() {
  for (const code of ["en", "he"]) $(`#lang-${code}`).addEventListener("click", () => switchLanguage(code));
  applyLanguage();
  const notice = $("#notice");
  if (!token || !admin) {
    notice.textContent = t("noTokens");
    return;
  }
  notice.textContent = t("loading");
  const found = await api("GET", "/demo/scenarios", admin);
  if (found.status !== 200) {
    notice.textContent = found.status === 404 ? t("notDemo") : t("badAdmin")(found.status);
    return;
  }
  const {business_id: businessId, scenarios, drills, settings} = found.body;
  failFastSettings = settings;
  drillList = drills;
  renderSettings(settings);
  renderDrills(drills);
  const playerModule = await loadPlayerModule();
  cards = scenarios.map((scenario) => new ScenarioCard(scenario, businessId, playerModule));
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
