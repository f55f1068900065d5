-- Shared by the read-write lock scripts, after prelude.lua (whose now_ms,
-- use and session reading they use; its lock, queue and beats are this
-- lock's KEYS[1], KEYS[3] and KEYS[4] too). KEYS, in order: the holders hash
-- (lease id -> "deadline|mode|token|ttl|delay|owner", delay the grant's
-- lock-delay in ms, '' for none), the fencing counter, the
-- queue list (entries "r:<waiter>" or "w:<waiter>", in arrival order: one
-- FIFO queue for both modes), the waiters' heartbeat deadlines (zset entry
-- -> Redis ms); KEYS[5], for an acquire in a session, the session hash. One
-- hash tag, so one cluster slot. Deadlines are Redis's clock: every lockd
-- replica agrees on them.
--
-- A grant made in a session has deadline 0 and ttl 0 in its record and a
-- field "<lease id>:s" naming the session hash: it has the session's
-- deadline and TTL, and ends when the session does (lease ids have no ':').
-- The functions are rw_-named, so that a script may hold them beside the
-- semaphores' (session_close.lua, session_renew.lua).
local holders = KEYS[1]

-- rw_use points the functions at another rwlock's keys, by their base.
local function rw_use(base)
  use(base)
  holders = base .. 'h'
end

-- The base of this rwlock's keys, as a session's grant set names them.
local function rw_base()
  return string.sub(holders, 1, -2)
end

local function rw_parse(v)
  local exp, mode, token, ttl, d, owner = string.match(v, '^(%d+)|(%a)|(%d+)|(%d+)|(%d*)|(.*)$')
  return {exp = tonumber(exp), mode = mode, token = tonumber(token), ttl = tonumber(ttl), d = tonumber(d) or 0, owner = owner}
end

local function rw_record(exp, mode, token, ttl, d, owner)
  if (d or 0) == 0 then d = '' end
  return exp .. '|' .. mode .. '|' .. token .. '|' .. ttl .. '|' .. d .. '|' .. owner
end

-- The unexpired holders, in no order, after removing the expired ones (each
-- reader's lease is its own: one expiring never touches another), and the
-- lock-delays in force: an expired grant inside its delay stays in the hash,
-- not a holder, listed as {mode, until, token}. A grant in a session
-- carries its session (sess) and the session's gc bound.
local function rw_live(now)
  local all = redis.call('HGETALL', holders)
  local recs, sess = {}, {}
  for i = 1, #all, 2 do
    local f = all[i]
    if string.sub(f, -2) == ':s' then
      sess[string.sub(f, 1, -3)] = all[i + 1]
    else
      recs[#recs + 1] = f
      recs[f] = all[i + 1]
    end
  end
  local out, delays = {}, {}
  for _, f in ipairs(recs) do
    local r = rw_parse(recs[f])
    if r.exp == 0 and sess[f] then
      r.sess = sess[f]
      r.exp, r.ttl, r.gc = session_info(r.sess)
    end
    if r.exp > now then
      r.id = f
      out[#out + 1] = r
    elseif r.exp + r.d > now then
      delays[#delays + 1] = {mode = r.mode, ends = r.exp + r.d, token = r.token}
    else
      redis.call('HDEL', holders, f, f .. ':s')
    end
  end
  return out, delays
end

-- The soonest-ending of the delays that keep mode out (an expired writer's
-- delays both modes, an expired reader's writers only), or nil.
local function rw_blocking(delays, mode)
  local soonest
  for _, d in ipairs(delays) do
    if (mode == 'w' or d.mode == 'w') and (not soonest or d.ends < soonest.ends) then soonest = d end
  end
  return soonest
end

local function writer_holds(hs)
  for _, h in ipairs(hs) do
    if h.mode == 'w' then return true end
  end
  return false
end

-- The hash lives as long as its last lease (and its lock-delay), or its
-- sessions' garbage bound (garbage collection only: every decision compares
-- deadlines with now).
local function rw_keep(hs, now, delays)
  local last = 0
  for _, h in ipairs(hs) do
    last = math.max(last, h.gc or h.exp, h.exp + (h.d or 0))
  end
  for _, d in ipairs(delays or {}) do
    last = math.max(last, d.ends)
  end
  if last > now then redis.call('PEXPIRE', holders, last - now) end
end

-- The live queue entries in order, after dropping the waiters whose
-- heartbeat lapsed (their lockd died): a dead waiter must not block others.
local function rw_waiters(now)
  local q = redis.call('LRANGE', queue, 0, -1)
  local out = {}
  for _, e in ipairs(q) do
    local d = redis.call('ZSCORE', beats, e)
    if d and tonumber(d) > now then
      out[#out + 1] = e
    else
      redis.call('LREM', queue, 0, e)
      redis.call('ZREM', beats, e)
    end
  end
  return out
end

-- Publishes every waiter that may be granted now: the readers at the head
-- while no writer holds, or the writer at the head when nobody holds.
local function rw_wake(hs, ws, channel)
  local wh = writer_holds(hs)
  for i, e in ipairs(ws) do
    if string.sub(e, 1, 2) == 'w:' then
      if i == 1 and #hs == 0 then redis.call('PUBLISH', channel, string.sub(e, 3)) end
      return
    end
    if wh then return end
    redis.call('PUBLISH', channel, string.sub(e, 3))
  end
end

-- Ends the grant id (h, its parsed record, from rw_live) as a release does:
-- out of the hash and out of its session's grant set. Returns the holders
-- left, for rw_keep and rw_wake.
local function rw_drop(hs, id)
  local left = {}
  for _, h in ipairs(hs) do
    if h.id == id then
      redis.call('HDEL', holders, id, id .. ':s')
      if h.sess then redis.call('SREM', h.sess .. ':g', rw_base() .. id) end
    else
      left[#left + 1] = h
    end
  end
  return left
end
