-- ARGV: lease id, owner, ttl ms, waiter id ('' for a single try), heartbeat
-- timeout ms, idempotency fingerprint ('' for none), idempotency record
-- retention ms, value (an election's; '' for a lock), lock-delay ms (0:
-- none). KEYS[6] is the
-- idempotency record (unused without one); KEYS[7], when given, the session
-- hash the grant is to live in (ARGV[3] is then unused).
-- Returns {granted, owner, token, expires ms, now ms, held, lease id, ttl
-- ms, in a session (1/0), the session's deadline (0: none)}; granted is 1
-- (granted, under the lease id returned), 0 (not yet), -4 (the session is
-- over: nothing was done), or for an idempotent retry -1 (its grant ended),
-- -2 (the key was used by another request) or -3 (its first attempt still
-- waits: {-3, lease id, waiter id} to wait in its place). When not granted
-- for a lock-delay, {0, ..., delay's end ms, the expired grant's token}
-- follow (else 0, 0); a queued waiter's answer ends with 1 when it is the
-- head of the line (0 otherwise).
local waiter = ARGV[4]
local idem, record = ARGV[6] or '', KEYS[6]
local skey = KEYS[7]

local delay = tonumber(ARGV[9]) or 0

-- The answer for the live grant h (holder's: exp, s, d, token, owner, ttl).
local function granted(h, now, id)
  local exp, ttl, ins = tonumber(h[1]), tonumber(h[6]) or 0, 0
  if h[2] then
    exp, ttl = session_deadline(h[2])
    ins = 1
  end
  return {1, h[5], tonumber(h[4]), exp, now, 0, id, ttl, ins, 0, 0, 0}
end

if idem ~= '' then
  local r = redis.call('HMGET', record, 'f', 'l', 'w')
  if r[1] and r[2] ~= ARGV[1] then
    if r[1] ~= idem then return {-2} end
    local t = now_ms()
    local h = holder(t, 'owner', 'ttl', 'id')
    if h and h[7] == r[2] then
      return granted(h, t, r[2])
    end
    if r[3] ~= '' and redis.call('ZSCORE', beats, r[3]) then
      return {-3, r[2], r[3]}
    end
    return {-1}
  end
end
local now = now_ms()
reap(now)
local head = prune(now)

-- The session, when the grant is to live in one: over means nothing is
-- granted or queued in it (never resurrected).
local sexp, sttl = 0, 0
if skey then
  sexp, sttl = session_deadline(skey)
  if sexp <= now then return {-4} end
end

local function remember()
  if idem == '' then return end
  redis.call('HSET', record, 'f', idem, 'l', ARGV[1], 'w', waiter)
  redis.call('PEXPIRE', record, ARGV[7])
end

local function enqueue()
  if waiter == '' then return end
  if not redis.call('ZSCORE', beats, waiter) then
    redis.call('RPUSH', queue, waiter)
  end
  redis.call('ZADD', beats, now + tonumber(ARGV[5]), waiter)
  -- Queue keys vanish on their own once every waiter stopped beating.
  redis.call('PEXPIRE', queue, ARGV[5])
  redis.call('PEXPIRE', beats, ARGV[5])
  remember()
end

local h, delayed = holder(now, 'owner', 'ttl', 'id')
if h and h[7] == ARGV[1] then
  -- Our own grant (a re-run after a lost reply, or a twin waiting in the
  -- same place): the same grant again.
  return granted(h, now, ARGV[1])
end
-- Whether this waiter is (or, queued now, becomes) the head of the line:
-- only the head looks again at the holder's deadline or the delay's end;
-- the others are woken when they reach the head.
local first = 0
if waiter ~= '' and (not head or head == waiter) then first = 1 end
if h then
  enqueue()
  return {0, h[5], tonumber(h[4]), deadline(h[1], h[2]), now, 1, '', 0, 0, sexp, 0, 0, first}
end
if delayed then
  -- An expired grant's lock-delay: nobody holds, nobody is granted; the
  -- waiters keep their places and wake at its end.
  enqueue()
  return {0, '', 0, 0, now, 0, '', 0, 0, sexp, delayed[1], delayed[2], first}
end
if head and head ~= waiter then
  -- Free, but promised to the waiter at the head, who has been woken.
  enqueue()
  return {0, '', 0, 0, now, 0, '', 0, 0, sexp, 0, 0}
end
if head then
  redis.call('LPOP', queue)
  redis.call('ZREM', beats, waiter)
end
local token = redis.call('INCR', fence)
local value = ARGV[8] or ''
if skey then
  -- Valid while the session is; the key's own expiry is only a bound for
  -- garbage, past the session's deadline (session_renew.lua moves it on
  -- before the session can outlive it).
  local gc = tonumber(redis.call('HGET', skey, 'gc')) or (sexp + keep_ms)
  redis.call('HSET', lock, 'id', ARGV[1], 'owner', ARGV[2], 'token', token, 'exp', sexp, 'ttl', sttl, 'value', value, 's', skey)
  if delay > 0 then redis.call('HSET', lock, 'd', delay) end
  redis.call('PEXPIRE', lock, gc - now)
  local set = skey .. ':g'
  redis.call('SADD', set, base_of())
  redis.call('PEXPIRE', set, sexp - now)
  emit(now, 'a', token, ARGV[2], value, sexp)
  redis.call('PEXPIRE', stream, gc - now + keep_ms)
  remember()
  return {1, ARGV[2], token, sexp, now, 0, ARGV[1], sttl, 1, 0, 0, 0}
end
local exp = now + tonumber(ARGV[3])
if delay > 0 then
  redis.call('HSET', lock, 'id', ARGV[1], 'owner', ARGV[2], 'token', token, 'exp', exp, 'ttl', ARGV[3], 'value', value, 'd', delay)
else
  redis.call('HSET', lock, 'id', ARGV[1], 'owner', ARGV[2], 'token', token, 'exp', exp, 'ttl', ARGV[3], 'value', value)
end
-- The hash outlives the deadline by the lock-delay (reap keeps it then).
redis.call('PEXPIRE', lock, tonumber(ARGV[3]) + delay)
emit(now, 'a', token, ARGV[2], value, exp)
remember()
return {1, ARGV[2], token, exp, now, 0, ARGV[1], tonumber(ARGV[3]), 0, 0, 0, 0}
