-- careflow cache: read values and count hits and misses in one round trip.
-- KEYS[1] stats hash, KEYS[2..] value keys. Returns the values (nil for a miss) in key order.
local values = {}
local hits, misses = 0, 0
for i = 2, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then
    hits = hits + 1
  else
    misses = misses + 1
  end
  values[i - 1] = v
end
if hits > 0 then
  redis.call('HINCRBY', KEYS[1], 'hits', hits)
end
if misses > 0 then
  redis.call('HINCRBY', KEYS[1], 'misses', misses)
end
return values
