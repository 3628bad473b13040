-- careflow cache: store several values with the same time to live in one round trip.
-- KEYS the value keys; ARGV[i] the value of KEYS[i], ARGV[#KEYS + 1] the time to live in ms.
local ms = ARGV[#KEYS + 1]
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i], 'PX', ms)
end
return #KEYS
