// The core of hosting: cancellation, services, host.
#pragma once

#include <hosting/background_service.hpp>
#include <hosting/cancellation.hpp>
#include <hosting/health.hpp>
#include <hosting/health_endpoint.hpp>
#include <hosting/host.hpp>
#include <hosting/host_builder.hpp>
#include <hosting/host_options.hpp>
#include <hosting/hosted_service.hpp>
#include <hosting/lifetime.hpp>
#include <hosting/logging.hpp>
#include <hosting/metrics.hpp>
#include <hosting/offload.hpp>
#include <hosting/services.hpp>
