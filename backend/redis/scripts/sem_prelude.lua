-- Counting semaphores (semaphore.go), after prelude.lua, whose now_ms, prune
-- and wake they use: KEYS[3] and KEYS[4] are the waiters' queue and
-- heartbeats as for a lock, KEYS[2] the fencing counter. KEYS[1] is the
-- slots hash: field "n" the live size, field "<k>" slot k's permit as
-- "token|exp|ttl|secret|delay|owner" (exp in Redis ms, delay the permit's
-- lock-delay in ms, '' for none; "" when free). A permit in
-- a session has exp and ttl 0, and field "<k>:s" names the session hash: it
-- has the session's deadline and TTL, and ends when the session does.
-- KEYS[5], for an acquire in a session, is the session hash.
local slots = KEYS[1]

-- sem_use points the functions at another semaphore's keys, by their base
-- (its queue and heartbeats are named as a lock's: prelude's use).
local function sem_use(base)
  use(base)
  slots = base .. 'slots'
end

-- The base of this semaphore's keys, as a session's grant set names them.
local function sem_base()
  return string.sub(slots, 1, -6)
end

local function parse(rec)
  if not rec or rec == '' then return nil end
  local token, exp, ttl, secret, d, owner = string.match(rec, '^(%d+)|(%d+)|(%d+)|([^|]*)|(%d*)|(.*)$')
  return {token = tonumber(token), exp = tonumber(exp), ttl = tonumber(ttl), secret = secret, d = tonumber(d) or 0, owner = owner}
end

local function record(p)
  local d = ''
  if (p.d or 0) > 0 then d = p.d end
  return p.token .. '|' .. p.exp .. '|' .. p.ttl .. '|' .. p.secret .. '|' .. d .. '|' .. p.owner
end

-- A parsed permit in a session takes its session's deadline, TTL and gc.
local function in_session(p, k)
  if p and p.exp == 0 then
    p.sess = redis.call('HGET', slots, k .. ':s')
    if p.sess then p.exp, p.ttl, p.gc = session_info(p.sess) end
  end
  return p
end

-- Slot k's permit (k a string), live or not, or nil.
local function load(k)
  return in_session(parse(redis.call('HGET', slots, k)), k)
end

-- Frees slot k, whose permit is p, as a release does: out of its session's
-- grant set too.
local function clear(k, p)
  if p.sess then
    redis.call('HDEL', slots, k .. ':s')
    redis.call('SREM', p.sess .. ':g', sem_base() .. p.secret .. '.' .. k)
  end
  redis.call('HSET', slots, k, '')
end

-- The unexpired permits of slots 0..n-1 (by slot), how many, the latest
-- deadline (a session's gc bound for a permit in one; a deadline + its
-- lock-delay), and the slots held by an expired permit's lock-delay (slot
-- -> {until, token}) with how many. A permit past its deadline is never
-- counted, whoever looks: no lockd need be alive for it to end; inside its
-- lock-delay it is not counted either, but its slot is not free.
local function read(now, n)
  local live, count, last, delayed, nd = {}, 0, 0, {}, 0
  local k = 0
  while k < n do
    local fields = {}
    for i = k, math.min(k + 999, n - 1) do fields[#fields + 1] = tostring(i) end
    local recs = redis.call('HMGET', slots, unpack(fields))
    for i, rec in ipairs(fields) do
      local p = in_session(parse(recs[i]), rec)
      if p and p.exp > now then
        live[tonumber(rec)] = p
        count = count + 1
        last = math.max(last, p.gc or p.exp, p.exp + p.d)
      elseif p and p.exp + p.d > now then
        delayed[tonumber(rec)] = {p.exp + p.d, p.token}
        nd = nd + 1
        last = math.max(last, p.exp + p.d)
      end
    end
    k = k + 1000
  end
  return live, count, last, delayed, nd
end

-- The delays as {n, then slot, until, token per delay}, and the soonest.
local function flat_delays(delayed)
  local out, soonest = {0}, nil
  for k, d in pairs(delayed) do
    out[1] = out[1] + 1
    out[#out + 1] = k; out[#out + 1] = d[1]; out[#out + 1] = d[2]
    if not soonest or d[1] < soonest[1] then soonest = d end
  end
  return out, soonest
end

-- live as {slot, token, exp, owner} flattened.
local function flat(live, n)
  local out = {}
  for k = 0, n - 1 do
    local p = live[k]
    if p then
      table.insert(out, k); table.insert(out, p.token); table.insert(out, p.exp); table.insert(out, p.owner)
    end
  end
  return out
end

-- The size is carried by the live permits and the waiters: once neither is
-- left, it is free (the next acquire sets its own).
local function live_size(now, count)
  local cur = tonumber(redis.call('HGET', slots, 'n') or '0')
  if count == 0 and not prune(now) then return 0 end
  -- (count includes the slots held by a lock-delay)
  return cur
end

-- The slots live as long as their longest permit or waiter.
local function keep(ms)
  local left = tonumber(redis.call('PTTL', slots))
  if left < 0 or left < ms then redis.call('PEXPIRE', slots, ms) end
end
