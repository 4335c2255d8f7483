"""The Lua scripts of the Redis store: every step that reads, decides and writes runs as one of them.

Theory of operation. Redis runs a script alone: no other client's command
lands between its reads and its writes, on any node. So each step that the
SQLite store runs inside ``BEGIN IMMEDIATE`` is one script here: claiming the
next job in queue order, finishing or failing a job with compare-and-set on
its status and owner, a heartbeat that returns the jobs still the worker's,
inserting a job (one active job per call, CONTRACT 8.1), storing a call,
and applying a play decision (rows 7, 8 and 10 with the retry counter) on
the condition that the facts it was decided on still hold.

Every script is ``PRELUDE`` (helpers and the layout of
``recsvc.storage.redis_keys``), then ``GUARD`` (a server that lost recsvc's
data answers an error, not "no such call"), then its body. Values are stored as
the strings the caller passed, never as numbers Lua formatted (``tostring``
keeps 14 digits): a timestamp read back equals the one written. A value that
is absent reads as ``false`` and travels as a null bulk string.

The scripts compute key names instead of declaring them all in KEYS, so the
store needs one Redis server (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

from ..contract.settings import LIVENESS_BEATS

PRELUDE = r"""
local P = 'recsvc:'
local BEATS = %(beats)d
local JOB_FIELDS = {'id', 'business_id', 'call_sid', 'recording_url', 'status', 'created_at', 'started_at',
                    'finished_at', 'heartbeat_at', 'worker_id', 'error_code', 'error_message', 'attempt', 'queue_seq'}
local REC_FIELDS = {'recording_url', 'path', 'size', 'sha256', 'content_type', 'stored_at'}

local function qmember(id) return string.format('%%015d', tonumber(id)) end

-- A job as a flat list: JOB_FIELDS, then its worker's heartbeat interval; nil when there is no such job.
local function job_row(id)
  local row = redis.call('HMGET', P .. 'job:' .. id, unpack(JOB_FIELDS))
  if not row[1] then return nil end
  local interval = false
  if row[10] then interval = redis.call('HGET', P .. 'worker:' .. row[10], 'heartbeat_interval') or false end
  row[15] = interval
  return row
end

local function paused() return redis.call('HGET', P .. 'control', 'workers_paused') == '1' end

local function worker_live(id, now)
  local w = redis.call('HMGET', P .. 'worker:' .. id, 'heartbeat_at', 'heartbeat_interval', 'threads')
  return w[1] and tonumber(w[1]) > now - BEATS * tonumber(w[2]) and tonumber(w[3]) > 0
end

local function live_workers(now)
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', P .. 'workers')) do
    if worker_live(id, now) then n = n + 1 end
  end
  return n
end

local function any_live_worker(now)
  if paused() then return false end
  for _, id in ipairs(redis.call('SMEMBERS', P .. 'workers')) do
    if worker_live(id, now) then return true end
  end
  return false
end

-- The newest job of a call for a URL (nil: none).
local function latest_for_url(bid, sid, url)
  local ids = redis.call('ZREVRANGE', P .. 'jobs:of:' .. bid .. ':' .. sid, 0, -1)
  for _, id in ipairs(ids) do
    if redis.call('HGET', P .. 'job:' .. id, 'recording_url') == url then return job_row(id) end
  end
  return nil
end

-- Everything a play request decides on (the SQLite store's play_snapshot row, in its order), and the
-- call's retry count: {call url, call created_at, recording (6), job (15), live '1'/'0', count}. nil: no call.
local function snapshot(bid, sid, now)
  local call = redis.call('HMGET', P .. 'call:' .. bid .. ':' .. sid, 'recording_url', 'created_at')
  if not call[2] then return nil end
  local out = {call[1], call[2]}
  local rec = redis.call('HMGET', P .. 'recording:' .. bid .. ':' .. sid, unpack(REC_FIELDS))
  for i = 1, 6 do out[#out + 1] = rec[i] end
  local job = nil
  if call[1] then job = latest_for_url(bid, sid, call[1]) end
  for i = 1, 15 do if job then out[#out + 1] = job[i] else out[#out + 1] = false end end
  out[#out + 1] = any_live_worker(now) and '1' or '0'
  out[#out + 1] = redis.call('GET', 'recording_retry_attempts:' .. bid .. ':' .. sid) or false
  return out
end

-- A job's status moves from `from` to `to`, its indexes with it; the caller has checked `from`.
local function move(id, from, to)
  local key = P .. 'job:' .. id
  local j = redis.call('HMGET', key, 'business_id', 'call_sid', 'worker_id')
  if from == 'queued' then redis.call('ZREM', P .. 'queue', qmember(id)) end
  if from == 'running' then
    redis.call('SREM', P .. 'jobs:running', id)
    if j[3] then redis.call('SREM', P .. 'jobs:running:' .. j[3], id) end
  end
  if to == 'completed' or to == 'failed' then
    local active = P .. 'jobs:active:' .. j[1] .. ':' .. j[2]
    if redis.call('GET', active) == tostring(id) then redis.call('DEL', active) end
    redis.call('PUBLISH', P .. 'events', 'ended:' .. id)
  end
  redis.call('HINCRBY', P .. 'jobs:count', from, -1)
  redis.call('HINCRBY', P .. 'jobs:count', to, 1)
  redis.call('HSET', key, 'status', to)
end

-- Fail a job if it is still `expected` (and, when given, still run by `owner`): compare-and-set.
local function fail(id, expected, owner, code, message, now)
  local j = redis.call('HMGET', P .. 'job:' .. id, 'status', 'worker_id')
  if j[1] ~= expected or (owner and j[2] ~= owner) then return false end
  move(id, expected, 'failed')
  redis.call('HSET', P .. 'job:' .. id, 'finished_at', now, 'error_code', code, 'error_message', message)
  return true
end

-- A new queued job; it takes the queue place of the call's previous job, if any (CONTRACT 3).
local function insert_job(bid, sid, url, attempt, now)
  local active = P .. 'jobs:active:' .. bid .. ':' .. sid
  if redis.call('EXISTS', active) == 1 then return redis.error_reply('ACTIVE the call already has an active job') end
  local id = redis.call('INCR', P .. 'next:job')
  local of = P .. 'jobs:of:' .. bid .. ':' .. sid
  local previous = redis.call('ZREVRANGE', of, 0, 0)
  local seq = tostring(id)
  if previous[1] then seq = redis.call('HGET', P .. 'job:' .. previous[1], 'queue_seq') end
  redis.call('HSET', P .. 'job:' .. id, 'id', id, 'business_id', bid, 'call_sid', sid, 'recording_url', url,
             'status', 'queued', 'attempt', attempt, 'queue_seq', seq, 'created_at', now)
  redis.call('ZADD', P .. 'jobs', id, id)
  redis.call('ZADD', of, id, id)
  redis.call('SET', active, id)
  redis.call('ZADD', P .. 'queue', seq, qmember(id))
  redis.call('HINCRBY', P .. 'jobs:count', 'queued', 1)
  redis.call('PUBLISH', P .. 'events', 'queued')
  return id
end

local function drop_recording(bid, sid)
  local key = P .. 'recording:' .. bid .. ':' .. sid
  local size = redis.call('HGET', key, 'size')
  if not size then return false end
  redis.call('DEL', key)
  redis.call('ZREM', P .. 'recordings:by-play', bid .. ':' .. sid)
  redis.call('HINCRBY', P .. 'recordings:size', 'bytes', -tonumber(size))
  redis.call('HINCRBY', P .. 'recordings:size', 'files', -1)
  return true
end

local function opt(v) if v == '' then return false end return v end
"""

SCRIPTS: dict[str, str] = {
    # KEYS none. ARGV: business_id, call_sid, now. -> cjson of the snapshot, or nil.
    "play_snapshot": r"""
local s = snapshot(ARGV[1], ARGV[2], tonumber(ARGV[3]))
if not s then return nil end
return cjson.encode(s)
""",
    # ARGV: business_id, call_sid, now, the snapshot the decision was made on (cjson), then the plan:
    # stuck job id ('' none), its expected status, its reason; insert: '' none | 'fixed' | 'count';
    # attempt (fixed) or floor (count); the counter window in ms; probe '1'/'0'.
    # -> {'changed', fresh snapshot or nil} | {'applied', stuck failed '1'/'0', new job id or false, attempt}
    "apply_play": r"""
local bid, sid, now = ARGV[1], ARGV[2], ARGV[3]
local s = snapshot(bid, sid, tonumber(now))
local seen = s and cjson.encode(s) or ''
if seen ~= ARGV[4] then return {'changed', s and seen or false} end
local stuck_id, stuck_status, stuck_reason = opt(ARGV[5]), ARGV[6], ARGV[7]
local mode, number, window, probe = ARGV[8], tonumber(ARGV[9]), ARGV[10], ARGV[11]
local failed = '0'
if stuck_id and fail(stuck_id, stuck_status, false, 'stuck', stuck_reason, now) then failed = '1' end
if probe == '1' then redis.call('SET', P .. 'probe', now, 'PX', 1000) end
if mode == '' then return {'applied', failed, false, '0'} end
local attempt = number
if mode == 'count' then
  local key = 'recording_retry_attempts:' .. bid .. ':' .. sid
  local counted = redis.call('INCR', key)
  redis.call('PEXPIRE', key, window)
  attempt = math.max(counted, number + 1)
end
local url = s[1]
local id = insert_job(bid, sid, url, attempt, now)
if type(id) == 'table' then return id end
return {'applied', failed, id, tostring(attempt)}
""",
    # ARGV: worker_id, now. -> the claimed job's row, or nil (nothing queued, or workers paused).
    "claim_next_job": r"""
if paused() then return nil end
local wid, now = ARGV[1], ARGV[2]
while true do
  local head = redis.call('ZRANGE', P .. 'queue', 0, 0)
  if not head[1] then return nil end
  local id = tostring(tonumber(head[1]))
  if redis.call('HGET', P .. 'job:' .. id, 'status') == 'queued' then
    move(id, 'queued', 'running')
    redis.call('HSET', P .. 'job:' .. id, 'started_at', now, 'heartbeat_at', now, 'worker_id', wid)
    redis.call('SADD', P .. 'jobs:running', id)
    redis.call('SADD', P .. 'jobs:running:' .. wid, id)
    return job_row(id)
  end
  redis.call('ZREM', P .. 'queue', head[1])  -- not queued any more: not the queue's
end
""",
    # ARGV: business_id, call_sid, url, attempt, now. -> the new job's id (error ACTIVE when the call has one).
    "insert_job": r"""
return insert_job(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
""",
    # ARGV: job id, expected status, code, message, now, owner ('' any). -> 1 when it was failed here.
    "fail_job": r"""
return fail(ARGV[1], ARGV[2], opt(ARGV[6]), ARGV[3], ARGV[4], ARGV[5]) and 1 or 0
""",
    # ARGV: job id, code, message, now. Fail a running job and queue its replacement with the same
    # attempt and queue place (an orphan: CONTRACT 4). -> the replacement's id, or nil.
    "replace_job": r"""
local id, now = ARGV[1], ARGV[4]
local j = redis.call('HMGET', P .. 'job:' .. id, 'business_id', 'call_sid', 'recording_url', 'attempt')
if not fail(id, 'running', false, ARGV[2], ARGV[3], now) then return nil end
return insert_job(j[1], j[2], j[3], j[4], now)
""",
    # ARGV: job id, worker id, now, then the recording: url, path, size, sha256, content_type, stored_at.
    # Records the file the worker renamed into place and completes the job, if the job is still the
    # worker's. -> {1, previous path or false} | {0}
    "complete_job": r"""
local id, wid, now = ARGV[1], ARGV[2], ARGV[3]
local key = P .. 'job:' .. id
local j = redis.call('HMGET', key, 'status', 'worker_id', 'business_id', 'call_sid')
if j[1] ~= 'running' or j[2] ~= wid then return {0} end
local bid, sid = j[3], j[4]
local rkey = P .. 'recording:' .. bid .. ':' .. sid
local previous = redis.call('HGET', rkey, 'path') or false
drop_recording(bid, sid)
redis.call('HSET', rkey, 'business_id', bid, 'call_sid', sid, 'recording_url', ARGV[4], 'path', ARGV[5],
           'size', ARGV[6], 'sha256', ARGV[7], 'content_type', ARGV[8], 'stored_at', ARGV[9],
           'last_played_at', now)
redis.call('ZADD', P .. 'recordings:by-play', now, bid .. ':' .. sid)
redis.call('HINCRBY', P .. 'recordings:size', 'bytes', tonumber(ARGV[6]))
redis.call('HINCRBY', P .. 'recordings:size', 'files', 1)
redis.call('HSET', key, 'finished_at', now)
move(id, 'running', 'completed')
return {1, previous}
""",
    # ARGV: worker id, now, lease ms, host, pid, threads, interval, started_at.
    # The worker's lease and its running jobs' heartbeats. -> the ids of the jobs still the worker's.
    "beat": r"""
local wid, now = ARGV[1], ARGV[2]
local wkey = P .. 'worker:' .. wid
if redis.call('EXISTS', wkey) == 0 then
  redis.call('HSET', wkey, 'host', ARGV[4], 'pid', ARGV[5], 'threads', ARGV[6], 'heartbeat_interval', ARGV[7],
             'started_at', ARGV[8])
end
redis.call('HSET', wkey, 'heartbeat_at', now)
redis.call('PEXPIRE', wkey, ARGV[3])
redis.call('SADD', P .. 'workers', wid)
local mine = {}
local set = P .. 'jobs:running:' .. wid
for _, id in ipairs(redis.call('SMEMBERS', set)) do
  local j = redis.call('HMGET', P .. 'job:' .. id, 'status', 'worker_id')
  if j[1] == 'running' and j[2] == wid then
    redis.call('HSET', P .. 'job:' .. id, 'heartbeat_at', now)
    mine[#mine + 1] = id
  else
    redis.call('SREM', set, id)
  end
end
return mine
""",
    # ARGV: worker id, lease ms, host, pid, threads, interval, now.
    "upsert_worker": r"""
local wkey = P .. 'worker:' .. ARGV[1]
redis.call('HSET', wkey, 'host', ARGV[3], 'pid', ARGV[4], 'threads', ARGV[5], 'heartbeat_interval', ARGV[6],
           'started_at', ARGV[7], 'heartbeat_at', ARGV[7])
redis.call('PEXPIRE', wkey, ARGV[2])
redis.call('SADD', P .. 'workers', ARGV[1])
return 1
""",
    # ARGV: now, code, reason prefix. The sweeper's lease check: fail every running job whose worker's
    # lease expired (its key is gone), on any node. -> {id, call_sid, reason} of each job failed.
    "fail_lost_leases": r"""
local now = tonumber(ARGV[1])
local failed = {}
for _, id in ipairs(redis.call('SMEMBERS', P .. 'jobs:running')) do
  local j = redis.call('HMGET', P .. 'job:' .. id, 'status', 'worker_id', 'heartbeat_at')
  if j[1] ~= 'running' then
    redis.call('SREM', P .. 'jobs:running', id)
  elseif not j[2] or redis.call('EXISTS', P .. 'worker:' .. j[2]) == 0 then
    local reason = ARGV[3] .. math.floor(now - tonumber(j[3] or now) + 0.5) .. 's ago'
    if fail(id, 'running', false, ARGV[2], reason, ARGV[1]) then
      failed[#failed + 1] = {id, redis.call('HGET', P .. 'job:' .. id, 'call_sid'), reason}
    end
  end
end
for _, wid in ipairs(redis.call('SMEMBERS', P .. 'workers')) do
  if redis.call('EXISTS', P .. 'worker:' .. wid) == 0 then redis.call('SREM', P .. 'workers', wid) end
end
return failed
""",
    # ARGV: business_id, call_sid, url ('' none), credentials ('' none), now, queue_now '1'/'0'.
    # Create or update a call; a new URL supersedes the active job and drops the recording (CONTRACT 6).
    # -> {created '1'/'0', url changed '1'/'0', dropped path or false, queued job id or false}
    "put_call": r"""
local bid, sid, url, cred, now, queue_now = ARGV[1], ARGV[2], opt(ARGV[3]), opt(ARGV[4]), ARGV[5], ARGV[6]
local key = P .. 'call:' .. bid .. ':' .. sid
local exists = redis.call('EXISTS', key) == 1
local created, changed, dropped, queued = '0', '0', false, false
local function set_url()
  if url then redis.call('HSET', key, 'recording_url', url) else redis.call('HDEL', key, 'recording_url') end
  if cred then redis.call('HSET', key, 'credentials', cred) else redis.call('HDEL', key, 'credentials') end
  redis.call('HSET', key, 'updated_at', now)
end
if not exists then
  created = '1'
  redis.call('HSET', key, 'created_at', now)
  set_url()
  redis.call('SADD', P .. 'calls:by-sid:' .. sid, bid)
elseif redis.call('HGET', key, 'recording_url') ~= url then
  changed = '1'
  set_url()
  local active = redis.call('GET', P .. 'jobs:active:' .. bid .. ':' .. sid)
  if active then
    local status = redis.call('HGET', P .. 'job:' .. active, 'status')
    fail(active, status, false, 'superseded', 'the call was given a new recording_url', now)
  end
  dropped = redis.call('HGET', P .. 'recording:' .. bid .. ':' .. sid, 'path') or false
  drop_recording(bid, sid)
end
if queue_now == '1' and url and redis.call('EXISTS', P .. 'jobs:active:' .. bid .. ':' .. sid) == 0
    and not latest_for_url(bid, sid, url) then
  queued = insert_job(bid, sid, url, 0, now)
end
return {created, changed, dropped, queued}
""",
    # ARGV: account_sid, business_id, auth_token, media_format. -> 'ok' | 'no_business' | 'taken'
    "register_twilio": r"""
local sid, bid = ARGV[1], ARGV[2]
if redis.call('EXISTS', P .. 'business:' .. bid) == 0 then return 'no_business' end
local holder = redis.call('HGET', P .. 'twilio:' .. sid, 'business_id')
if holder and holder ~= bid then return 'taken' end
local old = redis.call('GET', P .. 'twilio:of:' .. bid)
if old and old ~= sid then redis.call('DEL', P .. 'twilio:' .. old) end
redis.call('HSET', P .. 'twilio:' .. sid, 'business_id', bid, 'auth_token', ARGV[3], 'media_format', ARGV[4])
redis.call('SET', P .. 'twilio:of:' .. bid, sid)
return 'ok'
""",
    # ARGV: token_hash. -> the business id of a token, or nil.
    "business_for_token": r"""
return redis.call('HGET', P .. 'business:by-token', ARGV[1])
""",
    # ARGV: name, token_hash, now. -> the new business's id.
    "insert_business": r"""
local id = redis.call('INCR', P .. 'next:business')
redis.call('HSET', P .. 'business:' .. id, 'name', ARGV[1], 'token_hash', ARGV[2], 'created_at', ARGV[3])
redis.call('HSET', P .. 'business:by-token', ARGV[2], id)
return id
""",
    # ARGV: business_id, call_sid, sha256 ('' any). -> 1 when a recording was dropped.
    "delete_recording": r"""
local key = P .. 'recording:' .. ARGV[1] .. ':' .. ARGV[2]
if ARGV[3] ~= '' and redis.call('HGET', key, 'sha256') ~= ARGV[3] then return 0 end
return drop_recording(ARGV[1], ARGV[2]) and 1 or 0
""",
    # ARGV: triples of played_at, business_id, call_sid. last_played_at only moves forward.
    "note_plays": r"""
for i = 1, #ARGV, 3 do
  local key = P .. 'recording:' .. ARGV[i + 1] .. ':' .. ARGV[i + 2]
  local last = redis.call('HGET', key, 'last_played_at')
  if last and tonumber(ARGV[i]) > tonumber(last) then
    redis.call('HSET', key, 'last_played_at', ARGV[i])
    redis.call('ZADD', P .. 'recordings:by-play', ARGV[i], ARGV[i + 1] .. ':' .. ARGV[i + 2])
  end
end
return 1
""",
    # ARGV: keep member ('' none). -> the least recently played recording other than keep, or nil.
    "least_recently_played": r"""
for _, member in ipairs(redis.call('ZRANGE', P .. 'recordings:by-play', 0, 1)) do
  if member ~= ARGV[1] then
    local row = redis.call('HMGET', P .. 'recording:' .. member, 'business_id', 'call_sid', unpack(REC_FIELDS))
    return row
  end
end
return nil
""",
    # ARGV: job ids. -> each id's row (false for none), in order.
    "jobs": r"""
local out = {}
for i, id in ipairs(ARGV) do out[i] = job_row(id) or false end
return out
""",
    # ARGV: call_sid ('' any), business_id ('' any), status ('' any), since ('' any), limit.
    # -> rows, newest first.
    "jobs_filtered": r"""
local sid, bid, status, since, limit = opt(ARGV[1]), opt(ARGV[2]), opt(ARGV[3]), opt(ARGV[4]), tonumber(ARGV[5])
local out = {}
local source = P .. 'jobs'
if sid and bid then source = P .. 'jobs:of:' .. bid .. ':' .. sid end
if sid and not bid then
  -- one call_sid in every business that has it: its calls' own indexes, not every job there is
  local ids = {}
  for _, b in ipairs(redis.call('SMEMBERS', P .. 'calls:by-sid:' .. sid)) do
    for _, id in ipairs(redis.call('ZRANGE', P .. 'jobs:of:' .. b .. ':' .. sid, 0, -1)) do ids[#ids + 1] = tonumber(id) end
  end
  table.sort(ids, function(x, y) return x > y end)
  for _, id in ipairs(ids) do
    local row = job_row(id)
    if row and (not status or row[5] == status) and (not since or tonumber(row[6]) >= tonumber(since)) then
      out[#out + 1] = row
      if #out >= limit then break end
    end
  end
  return out
end
local start = 0
while #out < limit do
  local ids = redis.call('ZREVRANGE', source, start, start + 499)
  if not ids[1] then break end
  for _, id in ipairs(ids) do
    local row = job_row(id)
    if row and (not sid or row[3] == sid) and (not bid or row[2] == bid) and (not status or row[5] == status)
        and (not since or tonumber(row[6]) >= tonumber(since)) then
      out[#out + 1] = row
      if #out >= limit then break end
    end
  end
  start = start + 500
end
return out
""",
    # ARGV: business_id, call_sid, url ('' the newest of any URL). -> a row or nil.
    "latest_job": r"""
if ARGV[3] ~= '' then return latest_for_url(ARGV[1], ARGV[2], ARGV[3]) end
local ids = redis.call('ZREVRANGE', P .. 'jobs:of:' .. ARGV[1] .. ':' .. ARGV[2], 0, 0)
if not ids[1] then return nil end
return job_row(ids[1])
""",
    # -> rows of every queued and running job.
    "active_jobs": r"""
local out = {}
for _, m in ipairs(redis.call('ZRANGE', P .. 'queue', 0, -1)) do out[#out + 1] = job_row(tostring(tonumber(m))) end
for _, id in ipairs(redis.call('SMEMBERS', P .. 'jobs:running')) do
  local row = job_row(id)
  if row and row[5] == 'running' then out[#out + 1] = row end
end
return out
""",
    # ARGV: now. -> {live workers, any live and not paused '1'/'0', paused '1'/'0'}
    "workers_state": r"""
local now = tonumber(ARGV[1])
return {live_workers(now), any_live_worker(now) and '1' or '0', paused() and '1' or '0'}
""",
    # -> every worker row still leased: {id, host, pid, threads, interval, started_at, heartbeat_at} each.
    "all_workers": r"""
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', P .. 'workers')) do
  local w = redis.call('HMGET', P .. 'worker:' .. id, 'host', 'pid', 'threads', 'heartbeat_interval',
                       'started_at', 'heartbeat_at')
  if w[1] then out[#out + 1] = {id, w[1], w[2], w[3], w[4], w[5], w[6]} end
end
return out
""",
}


# Before every script: a server without the layout mark lost recsvc's data (restarted empty, flushed,
# failed over to an empty replica), and answering from it would tell players their calls do not exist.
GUARD = r"""
if redis.call('EXISTS', P .. 'layout') == 0 then
  return redis.error_reply('NOLAYOUT this Redis holds no recsvc data (restarted empty?)')
end
"""


def script_source(name: str) -> str:
    """The whole text of one script: the prelude, the guard, then its body."""
    return PRELUDE % {"beats": LIVENESS_BEATS} + GUARD + SCRIPTS[name]
