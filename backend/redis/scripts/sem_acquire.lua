-- ARGV: secret (the lease id's first part), owner, ttl ms, waiter id (''
-- for a single try), heartbeat timeout ms, permits (the size asked for),
-- wake channel.
-- Returns {1, slot, token, exp, now} when granted; {0, now, size, holders...}
-- when not yet (holders as {slot, token, exp, owner} flattened);
-- {-4, size} when the live semaphore has another size.
local waiter, asked, beat = ARGV[4], tonumber(ARGV[6]), tonumber(ARGV[5])
local now = now_ms()
local n = math.max(tonumber(redis.call('HGET', slots, 'n') or '0'), asked)
local live, count, last = read(now, n)
for k, p in pairs(live) do
  if p.secret == ARGV[1] then
    -- Our own permit (a re-run after a lost reply): the same again.
    return {1, k, p.token, p.exp, now}
  end
end
local cur = live_size(now, count)
if cur ~= 0 and cur ~= asked then
  if waiter ~= '' then
    redis.call('LREM', queue, 0, waiter)
    redis.call('ZREM', beats, waiter)
  end
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
  local out = {0, now, asked}
  for _, v in ipairs(flat(live, asked)) do table.insert(out, v) end
  return out
end

if count >= asked then return refuse() end
-- A free slot, but promised to the waiter at the head, who has been woken.
if head and head ~= waiter then return refuse() end
if head then
  redis.call('LPOP', queue)
  redis.call('ZREM', beats, waiter)
end
local slot = 0
while live[slot] do slot = slot + 1 end
local p = {token = redis.call('INCR', fence), exp = now + tonumber(ARGV[3]), ttl = tonumber(ARGV[3]), secret = ARGV[1], owner = ARGV[2]}
redis.call('HSET', slots, tostring(slot), record(p), 'n', asked)
keep(math.max(beat, p.exp - now + 1, last - now + 1))
-- More free slots: the next in line need not wait for a release.
if count + 1 < asked then wake(now, ARGV[7]) end
return {1, slot, p.token, p.exp, now}
