-- One replica's heartbeat for all its waiters on one semaphore (as
-- beat.lua): the head may go when a slot is free.
local now = now_ms()
local out, mine = refresh(now)
return wake_heads(now, out, mine, function(head)
  keep(tonumber(ARGV[1]))
  local n = tonumber(redis.call('HGET', slots, 'n') or '0')
  local _, count, _, _, nd = read(now, n)
  if n > 0 and count + nd >= n then return {} end
  return {head}
end)
