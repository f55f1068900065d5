-- Shared by every script (prepended in Go). KEYS are always, in order:
-- the lock hash, the fencing counter, the queue list, the waiters' heartbeat
-- deadlines (zset), the key's event log (stream). They share one hash tag,
-- so one cluster slot.
local lock, fence, queue, beats, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

-- use points the functions below at another key's keys, by their common
-- base (what a session's grant set holds): session_close.lua releases the
-- grants of many keys in one run. The session scripts are for one Redis
-- (standalone or Sentinel), where a script may reach keys it was not
-- given; Redis Cluster has no sessions (sessions.go).
local function use(base)
  lock, fence, queue, beats, stream = base .. 'lock', base .. 'fence', base .. 'q', base .. 'qt', base .. 'ev'
end

-- What a session's grant set member m names, under the backend's key
-- prefix: 'lock' (a lock's or an election's base: the grant is the one its
-- lock hash holds), or 'sem' / 'rw' with the base of a semaphore's or an
-- rwlock's keys and the grant's lease id after it. Every base ends with
-- '}:', and lease ids have neither '}' nor ':'.
local function session_member(m, prefix)
  local base, id = string.match(m, '^(.*}:)([^}:]*)$')
  if not base then return nil end
  if id == '' then return 'lock', base end
  local rest = string.sub(base, #prefix + 1)
  if string.sub(rest, 1, 3) == 's:{' then return 'sem', base, id end
  if string.sub(rest, 1, 4) == 'rw:{' then return 'rw', base, id end
  return nil
end

-- The base of the current key's keys: how a session's grant set names it.
local function base_of()
  return string.sub(lock, 1, -5)
end

-- A grant made in a session (field s of the lock hash: the session hash's
-- key) has no deadline of its own: it is valid while the session is, with
-- the session's deadline and TTL. A session gone (expired, closed) reads as
-- a deadline long past. Returns the deadline and the TTL in ms.
local function session_deadline(s)
  local r = redis.call('HMGET', s, 'exp', 'ttl')
  return tonumber(r[1]) or 0, tonumber(r[2]) or 0
end

-- A session's deadline, TTL and garbage bound gc (its grants' keys are kept
-- at least that long), read once per script run; a session gone reads as
-- a deadline long past. (For the semaphore and rwlock scripts, whose
-- grants in a session may be many per key.)
local session_cache = {}
local function session_info(s)
  local c = session_cache[s]
  if not c then
    local r = redis.call('HMGET', s, 'exp', 'ttl', 'gc')
    c = {tonumber(r[1]) or 0, tonumber(r[2]) or 0, tonumber(r[3]) or 0}
    session_cache[s] = c
  end
  return c[1], c[2], c[3]
end

-- The deadline of a holder whose lock hash has exp e and session s.
local function deadline(e, s)
  if s then return (session_deadline(s)) end
  return tonumber(e)
end

-- Redis's own clock in Unix ms: every replica of lockd agrees on it.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Drops waiters at the head of the queue whose heartbeat lapsed (their lockd
-- died or lost Redis): a dead waiter must not block the lock for long.
local function prune(now)
  while true do
    local head = redis.call('LINDEX', queue, 0)
    if not head then return false end
    local d = redis.call('ZSCORE', beats, head)
    if d and tonumber(d) > now then return head end
    redis.call('LPOP', queue)
    redis.call('ZREM', beats, head)
  end
end

-- Tells the first live waiter, if any, that the lock is free.
local function wake(now, channel)
  local head = prune(now)
  if head then redis.call('PUBLISH', channel, head) end
end

-- The event log: one stream entry per change of the holder, written by the
-- script that makes the change. Fields: n (1, 2, 3... with no gap while the
-- stream lives: a reader that sees a jump lost entries), e (a acquired, p
-- proclaimed, r released, x expired), t token, o owner, v value, x the
-- holder's deadline (ms). Kept about 1000 entries, and an hour past the
-- holder's deadline.
local keep_ms = 3600000

local function last_event()
  local e = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if not e[1] then return nil end
  local f, m = e[1][2], {id = e[1][1]}
  for i = 1, #f, 2 do m[f[i]] = f[i + 1] end
  return m
end

local function emit(now, kind, token, owner, value, exp)
  local last = last_event()
  local n = 1
  if last then n = tonumber(last.n) + 1 end
  exp = tonumber(exp) or 0
  redis.call('XADD', stream, 'MAXLEN', '~', 1000, '*', 'n', n, 'e', kind, 't', token, 'o', owner or '', 'v', value or '', 'x', exp)
  redis.call('PEXPIRE', stream, math.max(exp - now, 0) + keep_ms)
end

-- backend.MaxLockDelay in ms: a session's hash outlives its deadline by it,
-- so that a grant in it that expired still knows its deadline for its
-- lock-delay (every session script compares exp with now, never asks
-- whether the hash exists).
local max_lock_delay = 60000

-- A grant's lock-delay (field d of its lock hash, ms; absent: none): a grant
-- that ends by expiry keeps its lock hash, not a holder but "delayed", until
-- its deadline + d, and nothing is granted on the key meanwhile; a release
-- deletes the hash, which lifts it. The hash's own expiry outlives
-- deadline + d (acquire.lua, renew.lua). Returns the delay's end, or nil
-- when the grant with deadline e and delay d is live (e > now) or its delay
-- is over.
local function delayed_until(e, d, now)
  if e > now then return nil end
  local u = e + (tonumber(d) or 0)
  if u > now then return u end
  return nil
end

-- Redis expires a lease's key unseen. Whoever looks next (an acquire, a
-- renew, an observer's timer at the deadline) removes a grant whose deadline
-- passed and logs its expiry, once. A grant inside its lock-delay stays
-- (expired, logged, not a holder) until the delay ends.
local function reap(now)
  local h = redis.call('HMGET', lock, 'token', 'exp', 's', 'd')
  if h[1] then
    local e = deadline(h[2], h[3])
    if not e or e > now then return end
    if not delayed_until(e, h[4], now) then redis.call('DEL', lock) end
  end
  local last = last_event()
  if last and (last.e == 'a' or last.e == 'p') then
    emit(now, 'x', last.t, last.o, last.v, last.x)
  end
end

-- The lock's live holder after reap: its hash fields as asked for (names),
-- or nil, and the lock-delay in force {until, token} (nil: none). names
-- must not include exp, s, d or token: they come first.
local function holder(now, ...)
  local h = redis.call('HMGET', lock, 'exp', 's', 'd', 'token', ...)
  if not h[4] then return nil, nil end
  local e = deadline(h[1], h[2]) or 0
  if e > now then return h, nil end
  local u = delayed_until(e, h[3], now)
  if u then return nil, {u, tonumber(h[4])} end
  return nil, nil
end

-- The beat scripts (beats.go): ARGV is the heartbeat timeout ms, the wake
-- channel, then one replica's queue entries on this key. refresh moves the
-- heartbeat deadline of each entry still queued on to now + timeout (an
-- entry that left, was granted or was dropped is never put back) and
-- returns the entries no longer queued (their waiters re-run their acquire,
-- which queues them again: after a Redis that restarted empty, say) and the
-- set of all the entries given.
local function refresh(now)
  local timeout, out, mine, args = tonumber(ARGV[1]), {}, {}, {}
  for i = 3, #ARGV do
    local e = ARGV[i]
    mine[e] = true
    if redis.call('ZSCORE', beats, e) then
      args[#args + 1] = now + timeout
      args[#args + 1] = e
    else
      out[#out + 1] = e
    end
    if #args >= 1000 or (i == #ARGV and #args > 0) then
      redis.call('ZADD', beats, 'XX', unpack(args))
      args = {}
    end
  end
  redis.call('PEXPIRE', queue, timeout)
  redis.call('PEXPIRE', beats, timeout)
  return out, mine
end

-- After refresh: drops the dead waiters at the head of the queue, and, when
-- the entries go (those the caller found may go now; nil: the head) may be
-- granted, adds those of this replica to out for it to wake, and publishes
-- the others when a dead head was just dropped (their own replicas' beats
-- would wake them a little later).
local function wake_heads(now, out, mine, go_now)
  local first = redis.call('LINDEX', queue, 0)
  local head = prune(now)
  if not head then return out end
  for _, e in ipairs(go_now(head)) do
    if mine[e] then
      out[#out + 1] = e
    elseif head ~= first then
      redis.call('PUBLISH', ARGV[2], e)
    end
  end
  return out
end
