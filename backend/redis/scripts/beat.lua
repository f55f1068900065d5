-- One replica's heartbeat for all its waiters on one lock (beats.go; ARGV
-- as refresh's). Returns the entries the replica must wake: its own that
-- are no longer queued, and its waiter at the head when the lock is free
-- (a wake-up lost to a pub/sub reconnect, or a dead head just dropped) or
-- when the holder's lease or a lock-delay may end before the next beat
-- (only the head looks again at those: one that became the head since its
-- last look learns of it here).
local now = now_ms()
local out, mine = refresh(now)
local soon = now + math.floor(tonumber(ARGV[1]) / 3) + 1
return wake_heads(now, out, mine, function(head)
  local h, delayed = holder(now)
  if h then
    if deadline(h[1], h[2]) <= soon then return {head} end
    return {}
  end
  if delayed then
    if delayed[1] <= soon then return {head} end
    return {}
  end
  return {head}
end)
