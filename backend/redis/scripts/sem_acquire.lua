-- ARGV: secret (the lease id's first part), owner, ttl ms, waiter id (''
-- for a single try), heartbeat timeout ms, permits (the size asked for),
-- wake channel, lock-delay ms (0: none). KEYS[5], when given, is the session hash the permit is to
-- live in (ARGV[3] is then unused).
-- Returns {1, slot, token, exp, now, ttl, in a session (1/0)} when granted;
-- {0, now, size, the session's deadline (0: none), delays (count, then
-- slot, until, token each), holders...} when not yet (holders as {slot,
-- token, exp, owner} flattened); {-4, size} when the
-- live semaphore has another size; {-5} when the session is over (nothing
-- was granted or queued).
local waiter, asked, beat = ARGV[4], tonumber(ARGV[6]), tonumber(ARGV[5])
local skey = KEYS[5]
local now = now_ms()
local n = math.max(tonumber(redis.call('HGET', slots, 'n') or '0'), asked)
local live, count, last, delayed, nd = read(now, n)
for k, p in pairs(live) do
  if p.secret == ARGV[1] then
    -- Our own permit (a re-run after a lost reply): the same again.
    local ins = 0
    if p.sess then ins = 1 end
    return {1, k, p.token, p.exp, now, p.ttl, ins}
  end
end
local function leave()
  if waiter ~= '' then
    redis.call('LREM', queue, 0, waiter)
    redis.call('ZREM', beats, waiter)
  end
end
-- The session, when the permit is to live in one: over means nothing is
-- granted or queued in it (never resurrected).
local sexp, sttl, sgc = 0, 0, 0
if skey then
  sexp, sttl, sgc = session_info(skey)
  if sexp <= now then
    leave()
    return {-5}
  end
end
local cur = live_size(now, count + nd)
if cur ~= 0 and cur ~= asked then
  leave()
  return {-4, cur}
end
local head = prune(now)

local function enqueue()
  if waiter == '' then return end
  if not redis.call('ZSCORE', beats, waiter) then
    redis.call('RPUSH', queue, waiter)
  end
  redis.call('ZADD', beats, now + beat, waiter)
  redis.call('PEXPIRE', queue, beat)
  redis.call('PEXPIRE', beats, beat)
  redis.call('HSET', slots, 'n', asked)
  keep(math.max(beat, last - now + 1))
end

local function refuse()
  enqueue()
  local out = {0, now, asked, sexp}
  for _, v in ipairs((flat_delays(delayed))) do table.insert(out, v) end
  for _, v in ipairs(flat(live, asked)) do table.insert(out, v) end
  return out
end

-- A slot in an expired permit's lock-delay is not free.
if count + nd >= asked then return refuse() end
-- A free slot, but promised to the waiter at the head, who has been woken.
if head and head ~= waiter then return refuse() end
if head then
  redis.call('LPOP', queue)
  redis.call('ZREM', beats, waiter)
end
local slot = 0
while live[slot] or delayed[slot] do slot = slot + 1 end
local k = tostring(slot)
local d = tonumber(ARGV[8]) or 0
local p = {token = redis.call('INCR', fence), exp = now + tonumber(ARGV[3]), ttl = tonumber(ARGV[3]), secret = ARGV[1], d = d, owner = ARGV[2]}
if skey then
  -- Valid while the session is; the hash's own expiry is only a bound for
  -- garbage, past the session's deadline (session_renew.lua moves it on
  -- before the session can outlive it).
  p.exp, p.ttl = 0, 0
  redis.call('HSET', slots, k, record(p), k .. ':s', skey, 'n', asked)
  local set = skey .. ':g'
  redis.call('SADD', set, sem_base() .. p.secret .. '.' .. k)
  redis.call('PEXPIRE', set, sexp - now)
  keep(math.max(beat, sgc - now, sexp + keep_ms - now, last - now + 1, sexp + d - now + 1))
  p.exp, p.ttl = sexp, sttl
else
  redis.call('HSET', slots, k, record(p), 'n', asked)
  keep(math.max(beat, p.exp + d - now + 1, last - now + 1))
end
-- More free slots: the next in line need not wait for a release.
if count + nd + 1 < asked then wake(now, ARGV[7]) end
local ins = 0
if skey then ins = 1 end
return {1, slot, p.token, p.exp, now, p.ttl, ins}
