local p, id = ARGV[1], ARGV[2]
local owner = redis.call('HGET', p..'id:'..id, 'node')
if owner and redis.call('EXISTS', p..'node:'..owner) == 1 then return 1 end
return 0
