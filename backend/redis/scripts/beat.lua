-- One replica's heartbeat for all its waiters on one lock (beats.go; ARGV
-- as refresh's). Returns the entries the replica must wake: its own that
-- are no longer queued, and its waiter at the head when the lock is free
-- (a wake-up lost to a pub/sub reconnect, or a dead head just dropped).
local now = now_ms()
local out, mine = refresh(now)
return wake_heads(now, out, mine, function(head)
  local h, delayed = holder(now)
  if h or delayed then return {} end
  return {head}
end)
